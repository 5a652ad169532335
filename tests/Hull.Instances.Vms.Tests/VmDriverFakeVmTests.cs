using Hull.Api;
using Hull.Instances;
using Hull.Instances.Vms;
using Hull.Vm;
using Hull.Vm.Qmp;
using Xunit;

namespace Hull.Instances.Vms.Tests;

/// <summary>
/// The VM driver's failure paths over a fake VM (<see cref="FakeVmEngine"/>): what each operation says when the
/// engine fails, and what it leaves. No QEMU runs.
/// </summary>
public sealed class VmDriverFakeVmTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("hull-vmdriver-fake-").FullName;
    readonly FakeVmEngine _engine = new();
    readonly VmDriver _driver;
    static readonly CancellationToken None = CancellationToken.None;
    static readonly Dictionary<string, string> NoConfig = [];

    public VmDriverFakeVmTests()
    {
        var options = new VmDriverOptions
        {
            CacheDir = Path.Combine(_dir, "cache"), AgentTimeout = TimeSpan.FromMilliseconds(200),
        };
        _driver = new VmDriver(options, _engine);
        File.WriteAllBytes(Path.Combine(_dir, "disk.img"), new byte[4096]); // a plain disk image: no tar, no qemu-img
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    InstanceSpec Spec(string name, Dictionary<string, Dictionary<string, string>>? devices = null) => new()
    {
        Name = name, Type = InstanceTypes.Vm, Dir = Path.Combine(_dir, "instances", name),
        Image = new ImageRef { Fingerprint = "f", Type = InstanceTypes.Vm, File = Path.Combine(_dir, "disk.img") },
        Limits = ConfigSchema.ParseLimits(NoConfig), Environment = ConfigSchema.ParseEnvironment(NoConfig),
        Config = NoConfig, Devices = DeviceFactory.CreateAll(devices ?? [], validate: false),
    };

    string VmDir(InstanceSpec spec) => Path.Combine(spec.Dir, "vm");

    async Task<(InstanceSpec, FakeVm)> CreatedAsync(string name = "v1")
    {
        var spec = Spec(name);
        await _driver.CreateAsync(spec, None);
        return (spec, _engine.Vms[VmDir(spec)]);
    }

    [Fact]
    public async Task A_create_the_engine_refuses_says_so_and_leaves_no_vm_dir()
    {
        _engine.CreateFails = new VmException("no space left for the overlay");
        var spec = Spec("v1");
        var e = await Assert.ThrowsAsync<InstanceException>(() => _driver.CreateAsync(spec, None));
        Assert.Equal("creating VM 'v1': no space left for the overlay", e.Message);
        Assert.False(Directory.Exists(VmDir(spec)));
    }

    [Fact]
    public async Task A_create_whose_root_disk_cannot_grow_fails_and_leaves_no_vm_dir()
    {
        var spec = Spec("v1", new() { ["root"] = new() { ["type"] = "disk", ["path"] = "/", ["size"] = "1GiB" } });
        _engine.OnCreate = vm => vm.Fails["resize"] = new VmException("qemu-img resize: image is in use");
        var e = await Assert.ThrowsAsync<InstanceException>(() => _driver.CreateAsync(spec, None));
        Assert.Equal("device root: size: qemu-img resize: image is in use", e.Message);
        Assert.Contains("resize", _engine.Vms[VmDir(spec)].Calls);
        Assert.False(Directory.Exists(VmDir(spec)));
    }

    [Fact]
    public async Task A_start_the_engine_fails_is_an_error_that_names_the_vm()
    {
        var (spec, vm) = await CreatedAsync();
        vm.Fails["start"] = new VmException("QEMU exited at once: could not open disk0");
        var e = await Assert.ThrowsAsync<InstanceException>(() => _driver.StartAsync(spec, [], None));
        Assert.Equal("starting VM 'v1' failed: QEMU exited at once: could not open disk0", e.Message);
        Assert.Equal(500, e.Status);
        Assert.Null(vm.Pid);
    }

    [Fact]
    public async Task A_start_of_a_running_vm_is_a_conflict()
    {
        var (spec, vm) = await CreatedAsync();
        vm.Pid = 77;
        var e = await Assert.ThrowsAsync<InstanceException>(() => _driver.StartAsync(spec, [], None));
        Assert.Equal("VM 'v1' is already running (QEMU pid 77)", e.Message);
        Assert.Equal(409, e.Status);
        Assert.DoesNotContain("start", vm.Calls);
    }

    [Fact]
    public async Task A_resume_from_a_full_snapshot_that_fails_ends_qemu_and_says_the_disks_are_at_the_snapshot()
    {
        var (spec, vm) = await CreatedAsync();
        vm.Snapshots.Add(new VmSnapshot("s1", SnapshotKind.Disk, 0, DateTimeOffset.UtcNow));
        await File.WriteAllTextAsync(Path.Combine(VmDir(spec), "resume-snapshot"), "s1\n");
        vm.Pid = null;
        vm.Fails["restore"] = new QmpException("migrate-incoming", "GenericError", "device state mismatch");
        var e = await Assert.ThrowsAsync<InstanceException>(() => _driver.StartAsync(spec, [], None));
        Assert.StartsWith("VM 'v1' could not resume from the memory of snapshot 's1'", e.Message);
        Assert.Contains("start it again to boot from them", e.Message);
        Assert.Contains("kill", vm.Calls);
        Assert.False(File.Exists(Path.Combine(VmDir(spec), "resume-snapshot")));
    }

    [Fact]
    public async Task A_graceful_stop_that_fails_part_way_ends_qemu_the_hard_way()
    {
        var (spec, vm) = await CreatedAsync();
        vm.Pid = 4242;
        vm.Fails["stop"] = new QmpException("system_powerdown", "GenericError", "QMP went away");
        Assert.Equal(137, await _driver.StopAsync(spec, force: false, TimeSpan.FromSeconds(5), None));
        Assert.Equal(["state", "stop", "kill"], vm.Calls);
        Assert.Null(vm.Pid);
    }

    [Fact]
    public async Task A_stop_whose_kill_also_fails_is_an_error_and_the_vm_still_runs()
    {
        var (spec, vm) = await CreatedAsync();
        vm.Pid = 4242;
        vm.Fails["stop"] = new VmException("QMP is not answering");
        vm.KillWorks = false;
        var e = await Assert.ThrowsAsync<InstanceException>(
            () => _driver.StopAsync(spec, force: false, TimeSpan.FromSeconds(5), None));
        Assert.Equal("stopping VM 'v1': QMP is not answering", e.Message);
        Assert.Equal(4242, vm.Pid);
    }

    [Fact]
    public async Task A_snapshot_the_engine_refuses_is_a_bad_request_naming_the_vm()
    {
        var (spec, vm) = await CreatedAsync();
        vm.Fails["snapshot"] = new VmException("disk 'data' is raw: only qcow2 disks take snapshots");
        var e = await Assert.ThrowsAsync<InstanceException>(() => _driver.CreateSnapshotAsync(spec, "s1", None));
        Assert.Equal("snapshotting VM 'v1': disk 'data' is raw: only qcow2 disks take snapshots", e.Message);
        Assert.Equal(400, e.Status);
        Assert.Empty(vm.Snapshots);
    }

    [Fact]
    public async Task A_delete_the_engine_fails_is_an_error_and_keeps_the_vm()
    {
        var (spec, vm) = await CreatedAsync();
        vm.Fails["delete"] = new VmException("QEMU did not end");
        var e = await Assert.ThrowsAsync<InstanceException>(() => _driver.DeleteAsync(spec, None));
        Assert.Equal("deleting VM 'v1': QEMU did not end", e.Message);
        Assert.True(File.Exists(Path.Combine(VmDir(spec), StateFiles.Config)));
        // Once the engine can, the delete goes through and leaves nothing.
        vm.Fails.Remove("delete");
        await _driver.DeleteAsync(spec, None);
        Assert.False(Directory.Exists(VmDir(spec)));
    }
}
