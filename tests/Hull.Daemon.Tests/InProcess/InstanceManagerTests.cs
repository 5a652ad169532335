using Hull.Api;
using Hull.Instances;
using Xunit;

namespace Hull.Daemon.Tests.InProcess;

/// <summary>An <see cref="InstanceManager"/> over a <see cref="FakeDriver"/> and a store in a temp dir.</summary>
public sealed class ManagerHarness : IDisposable
{
    public string StateDir { get; } = Directory.CreateTempSubdirectory("hull-manager-").FullName;
    public FakeDriver Driver { get; } = new();
    public Store Store { get; }
    public InstanceManager Manager { get; private set; }
    readonly ImageStore _images;

    public ManagerHarness()
    {
        Store = new Store(Path.Combine(StateDir, "hull.db"));
        _images = new ImageStore(StateDir, Store);
        // A built-in VM image is a file: nothing to unpack.
        _images.RegisterBuiltin("test", InstanceTypes.Vm, async (work, _, ct) =>
        {
            var f = Path.Combine(work, "disk.img");
            await File.WriteAllTextAsync(f, "a disk", ct);
            return f;
        });
        Manager = NewManager();
    }

    /// <summary>A manager as a restarted hulld builds it (same store, same driver).</summary>
    public InstanceManager NewManager() =>
        Manager = new InstanceManager(StateDir, Store, _images, new EventHub(), [Driver], CancellationToken.None);

    public string InstanceDir(string name) => Path.Combine(StateDir, "instances", name);

    public Task CreateAsync(string name, bool start = false) =>
        Manager.CreateAsync(
            new InstanceCreateRequest { Name = name, Image = "test", Type = InstanceTypes.Vm, Start = start },
            null, CancellationToken.None);

    public InstanceRecord Row(string name) =>
        Store.GetInstance(name) ?? throw new Xunit.Sdk.XunitException($"no row {name}");

    public void Dispose()
    {
        Store.Dispose();
        Directory.Delete(StateDir, recursive: true);
    }
}

/// <summary>The state machine's transitions and failure paths: what the row says after each.</summary>
public sealed class InstanceManagerTests : IDisposable
{
    readonly ManagerHarness _h = new();
    public void Dispose() => _h.Dispose();
    static readonly CancellationToken None = CancellationToken.None;

    [Fact]
    public async Task Create_then_start_records_running()
    {
        await _h.CreateAsync("v1", start: true);
        var r = _h.Row("v1");
        Assert.Equal(InstanceState.Running, r.State);
        Assert.Null(r.Pending);
        Assert.Equal(4242, r.Pid);
        Assert.Equal(["create v1", "start v1"], _h.Driver.Calls);
    }

    [Fact]
    public async Task A_failed_create_leaves_no_row_and_no_dir()
    {
        _h.Driver.Fail.Add("create");
        var e = await Assert.ThrowsAsync<InstanceException>(() => _h.CreateAsync("v1"));
        Assert.Contains("fake create of v1 failed", e.Message);
        Assert.Null(_h.Store.GetInstance("v1"));
        Assert.False(Directory.Exists(_h.InstanceDir("v1")));
        Assert.Equal(["create v1", "delete v1"], _h.Driver.Calls); // the driver was asked to undo its part
    }

    [Fact]
    public async Task A_failed_start_is_recorded_as_stopped_with_the_error()
    {
        await _h.CreateAsync("v1");
        _h.Driver.Fail.Add("start");
        await Assert.ThrowsAsync<InstanceException>(() => _h.Manager.StartAsync("v1", null, None));
        var r = _h.Row("v1");
        Assert.Equal(InstanceState.Stopped, r.State);
        Assert.Null(r.Pending);
        Assert.Null(r.Pid);
        Assert.Equal("the last start failed: fake start of v1 failed", r.StatusMessage);
        Assert.Contains("stop --force v1", _h.Driver.Calls); // whatever started was ended
    }

    [Fact]
    public async Task A_failed_start_whose_cleanup_fails_is_recorded_as_error()
    {
        await _h.CreateAsync("v1");
        _h.Driver.Fail.UnionWith(["start", "stop"]);
        await Assert.ThrowsAsync<InstanceException>(() => _h.Manager.StartAsync("v1", null, None));
        var r = _h.Row("v1");
        Assert.Equal(InstanceState.Error, r.State);
        Assert.StartsWith("start failed (fake start of v1 failed) and cleanup failed", r.StatusMessage);
    }

    [Fact]
    public async Task A_failed_stop_keeps_what_the_engine_reports()
    {
        await _h.CreateAsync("v1", start: true);
        _h.Driver.Fail.Add("stop");
        await Assert.ThrowsAsync<InstanceException>(() => _h.Manager.StopAsync("v1", false, TimeSpan.Zero, null, None));
        var r = _h.Row("v1");
        Assert.Equal(InstanceState.Running, r.State); // the engine says it still runs
        Assert.Null(r.Pending);
        Assert.Equal("stop failed: fake stop of v1 failed", r.StatusMessage);
    }

    [Fact]
    public async Task Pause_and_resume_move_between_running_and_paused()
    {
        await _h.CreateAsync("v1", start: true);
        await _h.Manager.PauseAsync("v1", None);
        Assert.Equal(InstanceState.Paused, _h.Row("v1").State);
        var e = await Assert.ThrowsAsync<InstanceException>(() => _h.Manager.PauseAsync("v1", None));
        Assert.Equal(409, e.Status);
        await _h.Manager.ResumeAsync("v1", None);
        Assert.Equal(InstanceState.Running, _h.Row("v1").State);
    }

    [Fact]
    public async Task Deleting_a_running_instance_needs_force_and_stops_it_first()
    {
        await _h.CreateAsync("v1", start: true);
        var e = await Assert.ThrowsAsync<InstanceException>(() => _h.Manager.DeleteAsync("v1", false, null, None));
        Assert.Equal(409, e.Status);
        Assert.Equal(InstanceState.Running, _h.Row("v1").State);
        await _h.Manager.DeleteAsync("v1", true, null, None);
        Assert.Null(_h.Store.GetInstance("v1"));
        Assert.False(Directory.Exists(_h.InstanceDir("v1")));
        Assert.Equal(["stop --force v1", "delete v1"], _h.Driver.Calls[^2..]);
    }

    [Fact]
    public async Task A_failed_delete_leaves_the_row_marked_for_recovery()
    {
        await _h.CreateAsync("v1");
        _h.Driver.Fail.Add("delete");
        await Assert.ThrowsAsync<InstanceException>(() => _h.Manager.DeleteAsync("v1", false, null, None));
        Assert.Equal(PendingOp.Delete, _h.Row("v1").Pending);
        _h.Driver.Fail.Clear(); // the next hulld start finishes it
        await _h.NewManager().RecoverAsync(None);
        Assert.Null(_h.Store.GetInstance("v1"));
    }

    [Fact]
    public async Task A_failed_snapshot_leaves_no_snapshot_row()
    {
        await _h.CreateAsync("v1");
        _h.Driver.Fail.Add("snapshot");
        await Assert.ThrowsAsync<InstanceException>(() => _h.Manager.CreateSnapshotAsync("v1", "s1", None));
        Assert.Empty(_h.Manager.Snapshots("v1"));
        Assert.Equal("delete-snapshot v1", _h.Driver.Calls[^1]);
    }

    [Fact]
    public async Task A_failed_restore_is_recorded_as_error()
    {
        await _h.CreateAsync("v1");
        await _h.Manager.CreateSnapshotAsync("v1", "s1", None);
        _h.Driver.Fail.Add("restore");
        await Assert.ThrowsAsync<InstanceException>(() => _h.Manager.RestoreSnapshotAsync("v1", "s1", None));
        var r = _h.Row("v1");
        Assert.Equal(InstanceState.Error, r.State);
        Assert.Null(r.Pending);
        Assert.Equal("restoring snapshot s1 failed part way: restore it again", r.StatusMessage);
    }

    [Fact]
    public async Task Recovery_undoes_an_interrupted_create()
    {
        await _h.CreateAsync("v1");
        var r = _h.Row("v1");
        r.Pending = PendingOp.Create; // hulld was killed inside the driver's create
        _h.Store.UpdateInstance(r);
        await _h.NewManager().RecoverAsync(None);
        Assert.Null(_h.Store.GetInstance("v1"));
        Assert.False(Directory.Exists(_h.InstanceDir("v1")));
        Assert.Equal("delete v1", _h.Driver.Calls[^1]);
    }

    [Fact]
    public async Task Recovery_finishes_an_interrupted_delete()
    {
        await _h.CreateAsync("v1");
        var r = _h.Row("v1");
        r.Pending = PendingOp.Delete;
        _h.Store.UpdateInstance(r);
        await _h.NewManager().RecoverAsync(None);
        Assert.Null(_h.Store.GetInstance("v1"));
        Assert.False(Directory.Exists(_h.InstanceDir("v1")));
    }

    [Fact]
    public async Task Recovery_marks_an_interrupted_restore_as_error()
    {
        await _h.CreateAsync("v1");
        var r = _h.Row("v1");
        r.Pending = PendingOp.Restore;
        _h.Store.UpdateInstance(r);
        await _h.NewManager().RecoverAsync(None);
        r = _h.Row("v1");
        Assert.Equal(InstanceState.Error, r.State);
        Assert.Null(r.Pending);
        Assert.Equal("a snapshot restore was interrupted by a hulld crash: restore the snapshot again",
            r.StatusMessage);
    }

    [Fact]
    public async Task Recovery_records_how_an_instance_ended_while_hulld_was_away()
    {
        await _h.CreateAsync("v1", start: true);
        _h.Driver.Live.Remove("v1");
        _h.Driver.ExitCodeWhileAway = 3;
        await _h.NewManager().RecoverAsync(None);
        var r = _h.Row("v1");
        Assert.Equal(InstanceState.Stopped, r.State);
        Assert.Equal(3, r.LastExitCode);
        Assert.Null(r.Pid);
    }

    [Fact]
    public async Task Recovery_finds_a_running_instance_again()
    {
        await _h.CreateAsync("v1", start: true);
        await _h.NewManager().RecoverAsync(None);
        var r = _h.Row("v1");
        Assert.Equal(InstanceState.Running, r.State);
        Assert.Equal(4242, r.Pid);
        Assert.Equal("reattach v1", _h.Driver.Calls[^1]);
    }
}
