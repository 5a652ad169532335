using System.Text;
using Hull.Vm;
using Hull.Vm.Image;
using Xunit;

namespace Hull.Vm.Tests;

/// <summary>Tests that share one booted default VM (TCG here).</summary>
[Collection("shared-vm")]
public sealed class SharedVmTests(SharedVmFixture f)
{
    [SkippableFact]
    public async Task Boots_to_the_ready_marker_with_the_configured_hostname_and_root_disk()
    {
        var vm = f.Get();
        Assert.Contains($"{DefaultImage.ReadyMarker} hullbox", f.BootLog);
        Assert.Contains("mounted on /mnt/root", f.BootLog);
        Assert.Equal("first-42", f.FirstCommand.Trim());
        Assert.Equal(VmState.Running, await vm.GetStateAsync());
        Assert.Contains(vm.Accel, new[] { Accel.Kvm, Accel.Tcg });
        Assert.False(string.IsNullOrEmpty(vm.AccelReason));
        Assert.Equal("hullbox", (await TestImages.ShellAsync(vm, "hostname")).Trim());
        Assert.Contains("Hull default image", await TestImages.ShellAsync(vm, "cat /mnt/root/etc/os-release"));
    }

    [SkippableFact]
    public async Task Console_attach_round_trips_and_detaches_on_ctrl_close_bracket()
    {
        var vm = f.Get();
        using var con = await vm.OpenConsoleAsync();
        var output = new MemoryStream();
        var sync = new SyncStream(output);
        // Typed input: a command, then the detach key (Ctrl-]) after a pause so the output has time to arrive.
        var input = new SlowInput(Encoding.ASCII.GetBytes("echo attach-$((40+2))\n"), TimeSpan.FromSeconds(8));
        await con.AttachAsync(input, sync);
        Assert.Contains("attach-42", sync.Text);
        // Detached: the VM still runs, and the console can be attached again.
        Assert.Equal(VmState.Running, await vm.GetStateAsync());
        Assert.Contains("attach-42", File.ReadAllText(vm.ConsoleLogPath));

        // The shell respawns when it exits; the next command typed at once reaches the new shell.
        var from = vm.ConsoleLogLength;
        await vm.SendConsoleAsync("exit\n", TimeSpan.FromSeconds(10));
        await vm.WaitForConsoleAsync("built-in shell", TimeSpan.FromSeconds(30), from);
        Assert.Equal("respawned-7", (await TestImages.ShellAsync(vm, "echo respawned-$((3+4))")).Trim());
    }

    [SkippableFact]
    public async Task Pause_and_resume_are_reported_as_states_and_events()
    {
        var vm = f.Get();
        using var stop = vm.Qmp.Expect("STOP");
        await vm.PauseAsync();
        await stop.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(VmState.Paused, await vm.GetStateAsync());
        using var resume = vm.Qmp.Expect("RESUME");
        await vm.ResumeAsync();
        await resume.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(VmState.Running, await vm.GetStateAsync());
    }

    [SkippableFact]
    public async Task Data_disk_grows_online_and_shrinking_is_refused()
    {
        var vm = f.Get();
        var node = vm.Config.Disks[1].Node;
        var before = long.Parse((await TestImages.ShellAsync(vm, "cat /sys/block/vdb/size")).Trim());
        Assert.Equal(32L << 20, before * 512);
        await vm.ResizeDiskAsync(node, 48L << 20);
        var after = long.Parse((await TestImages.ShellAsync(vm, "sleep 1; cat /sys/block/vdb/size")).Trim());
        Assert.Equal(48L << 20, after * 512);
        var e = await Assert.ThrowsAsync<VmException>(() => vm.ResizeDiskAsync(node, 16L << 20));
        Assert.Contains("shrinking", e.Message);
    }

    [SkippableFact]
    public async Task Full_snapshot_restores_memory_and_the_agent_answers_after_the_restore()
    {
        var vm = f.Get();
        var agent = await f.AgentAsync();
        // The agent runs a long exec while the snapshot is taken: after the restore, the guest is back at that
        // moment, while the host has moved on. The channel must come back in sync.
        var running = await agent.StartExecAsync(new Hull.Agent.Protocol.ExecRequest { Argv = ["sleep", "600"] }, null,
            new MemoryStream(), null);
        // Memory state: a file on tmpfs (RAM) exists at the snapshot and is gone again after the restore.
        await TestImages.ShellAsync(vm, "echo before > /tmp/state");
        await vm.SnapshotAsync("full1", SnapshotKind.Full);
        await TestImages.ShellAsync(vm, "echo after > /tmp/state");
        Assert.Equal("after", (await TestImages.ShellAsync(vm, "cat /tmp/state")).Trim());
        await vm.SnapshotAsync("disk1", SnapshotKind.Disk);
        var list = await vm.ListSnapshotsAsync();
        Assert.Contains(list, s => s.Name == "full1" && s.Kind == SnapshotKind.Full && s.VmStateBytes > 0);
        Assert.Contains(list, s => s.Name == "disk1" && s.Kind == SnapshotKind.Disk);
        await Assert.ThrowsAsync<VmException>(() => vm.SnapshotAsync("disk1", SnapshotKind.Disk));
        // disk-only restore needs a stopped VM
        await Assert.ThrowsAsync<VmException>(() => vm.RestoreSnapshotAsync("disk1"));

        await vm.RestoreSnapshotAsync("full1");
        Assert.Equal(VmState.Running, await vm.GetStateAsync());
        Assert.Equal("before", (await TestImages.ShellAsync(vm, "cat /tmp/state")).Trim());

        // A new connection's hello resyncs the stream and ends the exec the restored guest still ran for the old one.
        agent = await f.ReconnectAgentAsync();
        Assert.Equal(1, agent.EndedSessions);
        await Assert.ThrowsAsync<Hull.Agent.Protocol.AgentUnavailableException>(() => running.WaitAsync());
        await running.DisposeAsync();
        var (code, text, _) = await TestImages.ExecAsync(agent, "cat", "/tmp/state");
        Assert.Equal(0, code);
        Assert.Equal("before\n", text);
        // The exec of the old connection (alive again after the restore) was ended by that hello.
        var pid = running.Pid;
        Assert.Equal("gone\n", (await TestImages.ExecAsync(agent, "sh", "-c",
            $"for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /proc/{pid} ] || {{ echo gone; exit 0; }}; sleep 0.2; done; cat " +
                $"/proc/{pid}/cmdline")).Out);

        await vm.DeleteSnapshotAsync("disk1");
        await vm.DeleteSnapshotAsync("full1");
        Assert.Empty(await vm.ListSnapshotsAsync());
        await Assert.ThrowsAsync<VmException>(() => vm.RestoreSnapshotAsync("nope"));
    }

    [SkippableFact]
    public async Task A_slow_console_terminal_gets_every_line_exactly_once()
    {
        var vm = f.Get();
        using var con = await vm.OpenConsoleAsync();
        var from = vm.ConsoleLogLength;
        // 401 lines (2.4 KB, one byte per QEMU write) while the attached terminal takes 3 s for its first write.
        var input = new SlowInput(Encoding.ASCII.GetBytes("seq 1000 1400; echo seq-$((1+1))-done\n"),
            TimeSpan.FromSeconds(10));
        var output = new SlowOutput(TimeSpan.FromSeconds(3));
        await con.AttachAsync(input, output);
        Assert.Contains("seq-2-done", output.Text);
        var lines = output.Text.Replace("\r", "", StringComparison.Ordinal).Split('\n');
        Assert.Equal(Enumerable.Range(1000, 401).Select(i =>
            i.ToString(System.Globalization.CultureInfo.InvariantCulture)),
            lines.Where(l => l.Length >= 4 && l.All(char.IsAsciiDigit)));
        // console.log has the run too. (It is not compared byte for byte: when a client lags, QEMU 7.2 logs a byte
        // it has to resend twice; see docs/vm.md.)
        await vm.WaitForConsoleAsync("seq-2-done", TimeSpan.FromSeconds(30), from);
    }

    sealed class SlowOutput(TimeSpan firstWrite) : Stream
    {
        readonly MemoryStream _inner = new();
        bool _waited;
        public string Text { get { lock (_inner) return Encoding.UTF8.GetString(_inner.ToArray()); } }
        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken ct = default)
        {
            if (!_waited) { _waited = true; await Task.Delay(firstWrite, ct); }
            lock (_inner) _inner.Write(buffer.Span);
        }
        public override void Write(byte[] buffer, int offset, int count) =>
            WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => 0; set { } }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
    }

    /// <summary>Input that yields its bytes, waits, then types the detach key.</summary>
    sealed class SlowInput(byte[] data, TimeSpan wait) : Stream
    {
        int _stage;
        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken ct = default)
        {
            switch (_stage++)
            {
                case 0: data.CopyTo(buffer); return data.Length;
                case 1: await Task.Delay(wait, ct); buffer.Span[0] = VmConsole.DetachKey; return 1;
                default: await Task.Delay(Timeout.Infinite, ct); return 0;
            }
        }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => 0; set { } }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    sealed class SyncStream(MemoryStream inner) : Stream
    {
        public string Text { get { lock (inner) return Encoding.UTF8.GetString(inner.ToArray()); } }
        public override void Write(byte[] buffer, int offset,
            int count) { lock (inner) inner.Write(buffer, offset, count); }
        public override Task WriteAsync(byte[] buffer, int offset, int count,
            CancellationToken ct) { Write(buffer, offset, count); return Task.CompletedTask; }
        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer,
            CancellationToken ct = default) { lock (inner) inner.Write(buffer.Span); return ValueTask.CompletedTask; }
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => 0; set { } }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
    }
}
