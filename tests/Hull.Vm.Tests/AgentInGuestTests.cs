using System.Security.Cryptography;
using System.Text;
using System.Threading.Channels;
using Hull.TestSupport;
using Hull.Agent.Protocol;
using Xunit;

namespace Hull.Vm.Tests;

/// <summary>
/// Hull's agent client against the real NativeAOT agent in the shared booted guest (virtio-serial port, TCG here):
/// exec, pty, signals and files, exactly as a VM driver uses them through <see cref="IExecTarget"/> and
/// <see cref="IFileTarget"/>.
/// </summary>
[Collection("shared-vm")]
public sealed class AgentInGuestTests(SharedVmFixture f)
{
    [SkippableFact]
    public async Task Agent_is_ready_on_the_virtio_serial_port_and_describes_the_guest()
    {
        var a = await f.AgentAsync();
        Assert.NotNull(a.Guest);
        Assert.Equal("hullbox", a.Guest!.Hostname);
        Assert.Equal("virtio-serial", a.Guest.Transport);
        Assert.False(string.IsNullOrEmpty(a.Guest.KernelRelease));
        var pong = await a.PingAsync();
        Assert.Equal("hullbox", pong.Hostname);
        Assert.True(f.Get().AgentPortOpen);
    }

    [SkippableFact]
    public async Task Exec_streams_stdin_in_and_stdout_and_stderr_back_separately_with_the_exit_code()
    {
        IExecTarget target = await f.AgentAsync();
        var stdout = new MemoryStream();
        var stderr = new MemoryStream();
        var r = await target.ExecAsync(new ExecRequest { Argv = ["sh", "-c", "cat; echo to-err >&2; exit 3"],
            Stdin = true },
            new MemoryStream(Encoding.UTF8.GetBytes("hello from the host\n")), stdout, stderr);
        Assert.Equal(3, r.ExitCode);
        Assert.Equal(0, r.Signal);
        Assert.Equal("hello from the host\n", Encoding.UTF8.GetString(stdout.ToArray()));
        Assert.Equal("to-err\n", Encoding.UTF8.GetString(stderr.ToArray()));

        // Several windows of stdin (flow control towards the guest) and of stdout (back to the host).
        var big = RandomNumberGenerator.GetBytes(3 << 20);
        stdout.SetLength(0);
        r = await target.ExecAsync(new ExecRequest { Argv = ["sha256sum"], Stdin = true }, new MemoryStream(big),
            stdout, null);
        Assert.Equal(0, r.ExitCode);
        Assert.StartsWith(Convert.ToHexStringLower(SHA256.HashData(big)), Encoding.ASCII.GetString(stdout.ToArray()));
        stdout.SetLength(0);
        r = await target.ExecAsync(new ExecRequest { Argv = ["head", "-c", "3000000", "/dev/zero"] }, null, stdout,
            null);
        Assert.Equal(0, r.ExitCode);
        Assert.Equal(3000000, stdout.Length);
        Assert.True(stdout.ToArray().All(b => b == 0));

        var e = await Assert.ThrowsAsync<AgentOperationException>(() =>
            target.ExecAsync(new ExecRequest { Argv = ["no-such-command"] }, null, new MemoryStream(), null));
        Assert.Contains("no-such-command", e.Message);
    }

    [SkippableFact]
    public async Task Pty_exec_has_the_requested_size_follows_resize_and_takes_typed_input()
    {
        IExecTarget target = await f.AgentAsync();
        var input = new FeedStream();
        var output = new CaptureStream();
        await using var p = await target.StartExecAsync(new ExecRequest
        {
            Argv = ["sh", "-c", "tty; stty size; read line; stty size; echo got-$line; exit 5"],
            Tty = true, Rows = 33, Cols = 101, Stdin = true,
        }, input, output, null);
        Assert.True(p.Pid > 1);
        await output.WaitForAsync("33 101");
        Assert.Contains("/dev/pts/", output.Text);
        await p.ResizeAsync(40, 120);
        input.Feed("go\n");
        var r = await p.WaitAsync().WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal(5, r.ExitCode);
        Assert.Contains("40 120", output.Text);
        Assert.Contains("got-go", output.Text);
    }

    [SkippableFact]
    public async Task Signals_reach_the_process_and_sigkill_is_reported_as_such()
    {
        IExecTarget target = await f.AgentAsync();
        var output = new CaptureStream();
        await using (var p = await target.StartExecAsync(new ExecRequest
        {
            Argv = ["sh", "-c", "trap 'echo got-term; exit 7' TERM; echo armed; while true; do sleep 0.1; done"],
        }, null, output, null))
        {
            await output.WaitForAsync("armed");
            await p.SignalAsync(15);
            var r = await p.WaitAsync().WaitAsync(TimeSpan.FromSeconds(60));
            Assert.Equal(7, r.ExitCode);
            Assert.Equal(0, r.Signal);
            Assert.Contains("got-term", output.Text);
        }
        await using (var p = await target.StartExecAsync(new ExecRequest { Argv = ["sleep", "600"] }, null,
            new MemoryStream(), null))
        {
            await p.SignalAsync(9);
            var r = await p.WaitAsync().WaitAsync(TimeSpan.FromSeconds(60));
            Assert.Equal(9, r.Signal);
            Assert.Equal(137, r.ExitCode);
        }
    }

    [SkippableFact]
    public async Task Files_push_and_pull_back_byte_exact_with_stat_list_and_delete()
    {
        var a = await f.AgentAsync();
        IFileTarget files = a;
        var dir = "/tmp/hull-files-" + Guid.NewGuid().ToString("N")[..6];
        // Larger than the 256 KiB window several times over: flow control in both directions.
        var big = RandomNumberGenerator.GetBytes((3 << 20) + 12345);
        var small = Encoding.UTF8.GetBytes("small file\n");
        var pushed = await files.PushFileAsync(
            new PushRequest { Path = dir + "/sub/big.bin", Mode = 0b110_100_000, MakeParents = true },
            new MemoryStream(big));
        Assert.Equal(big.Length, pushed.Size);
        Assert.Equal(0b110_100_000u, pushed.Mode);
        await files.PushFileAsync(new PushRequest { Path = dir + "/small.txt" }, new MemoryStream(small));

        var back = new MemoryStream();
        var st = await files.PullFileAsync(dir + "/sub/big.bin", back);
        Assert.Equal("file", st.Type);
        Assert.True(big.AsSpan().SequenceEqual(back.ToArray()), "the pulled file differs from the pushed one");
        // The guest sees the same bytes.
        var (code, sum, _) = await TestImages.ExecAsync(a, "sha256sum", dir + "/sub/big.bin");
        Assert.Equal(0, code);
        Assert.StartsWith(Convert.ToHexStringLower(SHA256.HashData(big)), sum);

        var stat = await a.StatAsync(dir + "/small.txt");
        Assert.Equal(small.Length, stat.Size);
        Assert.Equal(0b110_100_100u, stat.Mode);
        var made = await a.MkdirAsync(new MkdirRequest { Path = dir + "/a/b", Parents = true, Mode = 0b111_000_000 });
        Assert.Equal("directory", made.Type);
        Assert.Equal(0b111_000_000u, made.Mode);

        var list = await a.ListAsync(dir);
        Assert.Equal(["a", "small.txt", "sub"],
            list.Select(e => Path.GetFileName(e.Path)).Order(StringComparer.Ordinal).ToArray());
        Assert.Equal("directory", list.Single(e => e.Path.EndsWith("/sub", StringComparison.Ordinal)).Type);
        Assert.Equal(small.Length, list.Single(e => e.Path.EndsWith("/small.txt", StringComparison.Ordinal)).Size);

        await a.RemoveAsync(dir + "/small.txt");
        var gone = await Assert.ThrowsAsync<AgentOperationException>(() => a.StatAsync(dir + "/small.txt"));
        Assert.Equal("ENOENT", gone.ErrnoName);
        var notEmpty = await Assert.ThrowsAsync<AgentOperationException>(() => a.RemoveAsync(dir));
        Assert.Equal("ENOTEMPTY", notEmpty.ErrnoName);
        await a.RemoveAsync(dir, recursive: true);
        var missing = await Assert.ThrowsAsync<AgentOperationException>(() =>
            files.PullFileAsync(dir + "/sub/big.bin", new MemoryStream()));
        Assert.Equal("ENOENT", missing.ErrnoName);
    }
}
