using System.Security.Cryptography;
using System.Text;
using Hull.Agent.Protocol;
using Hull.TestSupport;
using Xunit;

namespace Hull.Agent.Tests;

/// <summary>One agent process, one host connection, shared by the exec tests (which also run concurrently on
/// it).</summary>
public sealed class AgentConnection : IAsyncLifetime
{
    public AgentHarness Harness { get; private set; } = null!;
    public AgentClient Client { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Harness = await AgentHarness.StartAsync();
        Client = await Harness.ConnectAsync();
    }

    public async Task DisposeAsync()
    {
        if (Client is not null) await Client.DisposeAsync();
        if (Harness is not null) await Harness.DisposeAsync();
    }
}

public class ExecTests(AgentConnection conn) : IClassFixture<AgentConnection>
{
    AgentClient Client => conn.Client;

    async Task<(ExecResult Result, string Out, string Err)> Run(ExecRequest req, string? stdin = null)
    {
        var o = new CaptureStream();
        var e = new CaptureStream();
        using var input = stdin is null ? null : new MemoryStream(Encoding.UTF8.GetBytes(stdin));
        var r = await Client.ExecAsync(req, input, o, e);
        return (r, o.Text, e.Text);
    }

    static ExecRequest Sh(string script) => new() { Argv = ["/bin/sh", "-c", script] };

    [Fact]
    public void Ready_describes_the_guest()
    {
        var g = Client.Guest!;
        Assert.Equal(File.ReadAllText("/proc/sys/kernel/osrelease").Trim(), g.KernelRelease);
        Assert.Equal(File.ReadAllText("/proc/sys/kernel/hostname").Trim(), g.Hostname);
        Assert.Equal("0.1.0", g.AgentVersion);
        Assert.Equal("unix", g.Transport);
        Assert.True(g.UptimeSeconds > 0);
    }

    [Fact]
    public async Task Ping_answers_with_fresh_guest_info()
    {
        var g = await Client.PingAsync();
        Assert.Equal(File.ReadAllText("/proc/sys/kernel/osrelease").Trim(), g.KernelRelease);
        Assert.True(g.UptimeSeconds >= Client.Guest!.UptimeSeconds - 1);
    }

    [Theory]
    [InlineData("exit 0", 0)]
    [InlineData("exit 7", 7)]
    [InlineData("exit 255", 255)]
    public async Task Reports_exit_codes(string script, int code)
    {
        var (r, _, _) = await Run(Sh(script));
        Assert.Equal(code, r.ExitCode);
        Assert.Equal(0, r.Signal);
    }

    [Fact]
    public async Task Reports_the_terminating_signal()
    {
        var (r, _, _) = await Run(Sh("kill -TERM $$"));
        Assert.Equal(15, r.Signal);
        Assert.Equal(128 + 15, r.ExitCode);
    }

    [Fact]
    public async Task Separates_stdout_and_stderr()
    {
        var (r, o, e) = await Run(Sh("echo out1; echo err1 >&2; echo out2; echo err2 >&2"));
        Assert.Equal(0, r.ExitCode);
        Assert.Equal("out1\nout2\n", o);
        Assert.Equal("err1\nerr2\n", e);
    }

    [Fact]
    public async Task Streams_stdin_until_end_of_file()
    {
        var text = string.Concat(Enumerable.Range(0, 5000).Select(i => $"line {i}\n"));
        var (r, o, _) = await Run(new ExecRequest { Argv = ["cat"] }, text);
        Assert.Equal(0, r.ExitCode);
        Assert.Equal(text, o);
        // wc only prints once it has seen end of file.
        var (r2, o2, _) = await Run(new ExecRequest { Argv = ["wc", "-l"] }, text);
        Assert.Equal(0, r2.ExitCode);
        Assert.Equal("5000", o2.Trim());
    }

    [Fact]
    public async Task Without_stdin_the_process_reads_dev_null()
    {
        var (r, o, _) = await Run(Sh("cat; echo done"));
        Assert.Equal(0, r.ExitCode);
        Assert.Equal("done\n", o);
    }

    [Fact]
    public async Task Passes_env_and_cwd()
    {
        using var dir = new TempDir("hull-agent-cwd");
        var (r, o, _) = await Run(new ExecRequest { Argv = ["sh", "-c", "echo $FOO; pwd; echo $PATH"],
            Env = ["FOO=bar baz"], Cwd = dir.Path });
        Assert.Equal(0, r.ExitCode);
        var lines = o.Split('\n');
        Assert.Equal("bar baz", lines[0]);
        Assert.Equal(dir.Path, lines[1]);
        Assert.Contains("/usr/bin", lines[2]);
    }

    [Fact]
    public async Task Copies_10_MB_of_output_intact()
    {
        using var dir = new TempDir("hull-agent-big");
        var data = RandomNumberGenerator.GetBytes(10 * 1024 * 1024);
        var file = Path.Combine(dir.Path, "blob");
        await File.WriteAllBytesAsync(file, data);
        var o = new CaptureStream();
        var e = new CaptureStream();
        var r = await Client.ExecAsync(new ExecRequest { Argv = ["sh", "-c", $"cat {file}; cat {file} >&2"] }, null, o,
            e);
        Assert.Equal(0, r.ExitCode);
        Assert.Equal(SHA256.HashData(data), SHA256.HashData(o.Bytes));
        Assert.Equal(SHA256.HashData(data), SHA256.HashData(e.Bytes));
    }

    [Fact]
    public async Task Runs_execs_concurrently()
    {
        var tasks = Enumerable.Range(0, 12).Select(async i =>
        {
            var input = string.Concat(Enumerable.Repeat($"{i}-", 20000));
            var (r, o, e) = await Run(Sh($"cat; echo; echo err{i} >&2; exit {i}"), input);
            Assert.Equal(i, r.ExitCode);
            Assert.Equal(input + "\n", o);
            Assert.Equal($"err{i}\n", e);
        }).ToList();
        await Task.WhenAll(tasks);
    }

    [Fact]
    public async Task A_stalled_reader_does_not_hold_up_other_sessions()
    {
        // The first exec writes forever into a stream that does not take its data: flow control must stop it at its
        // window while other execs, and file operations, keep going on the same connection.
        var gate = new TaskCompletionSource();
        var stalled = new StallingStream(gate.Task);
        var p = await Client.StartExecAsync(new ExecRequest { Argv = ["cat", "/dev/zero"] }, null, stalled, null);
        try
        {
            for (var i = 0; i < 3; i++)
            {
                var (r, o, _) = await Run(Sh($"echo still-here-{i}"));
                Assert.Equal($"still-here-{i}\n", o);
            }
            Assert.Equal("file", (await Client.StatAsync("/etc/passwd")).Type);
            // cat is held at a full pipe: what it wrote is bounded by the window, one chunk in hand and the pipe
            // buffer,
            // not by how fast it can write (without flow control it would be gigabytes by now).
            var io = File.ReadAllLines($"/proc/{p.Pid}/io");
            var written = long.Parse(io.First(l => l.StartsWith("wchar:")).Split(':')[1].Trim());
            Assert.True(written < 2 * 1024 * 1024, $"cat wrote {written} bytes while its reader stalled");
            Assert.True(stalled.Received <= Wire.ChunkSize, $"{stalled.Received} bytes reached the stalled stream");
        }
        finally
        {
            await p.SignalAsync(9);
            gate.SetResult();
        }
        var result = await p.WaitAsync();
        Assert.Equal(9, result.Signal);
    }

    [Fact]
    public async Task Signals_a_running_exec()
    {
        var o = new CaptureStream();
        await using var p = await Client.StartExecAsync(
            Sh("trap 'echo got-usr1; exit 3' USR1; echo ready; while :; do sleep 0.05; done"), null, o, null);
        Assert.True(p.Pid > 0);
        await o.WaitForAsync("ready");
        await p.SignalAsync(10);
        var r = await p.WaitAsync();
        Assert.Equal(3, r.ExitCode);
        Assert.Contains("got-usr1", o.Text);
    }

    [Fact]
    public async Task Kills_a_running_exec_and_its_children_go_with_the_group_on_cancel()
    {
        var o = new CaptureStream();
        var p = await Client.StartExecAsync(new ExecRequest { Argv = ["sleep", "1000"] }, null, o, null);
        await p.SignalAsync(9);
        var r = await p.WaitAsync();
        Assert.Equal(9, r.Signal);
        Assert.Equal(137, r.ExitCode);
        Assert.False(Directory.Exists($"/proc/{p.Pid}") && File.ReadAllText($"/proc/{p.Pid}/comm").Trim() == "sleep");

        using var cts = new CancellationTokenSource();
        var o2 = new CaptureStream();
        var run = Client.ExecAsync(Sh("echo started; sleep 1000"), null, o2, null, cts.Token);
        await o2.WaitForAsync("started");
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => run);
    }

    [Fact]
    public async Task Reports_a_missing_command_clearly()
    {
        var e = await Assert.ThrowsAsync<AgentOperationException>(() =>
            Run(new ExecRequest { Argv = ["no-such-command-hull"] }));
        Assert.Contains("no-such-command-hull", e.Message);
        Assert.Contains("not found", e.Message);
        Assert.Equal(2, e.Errno);
        var e2 = await Assert.ThrowsAsync<AgentOperationException>(() =>
            Run(new ExecRequest { Argv = ["true"], Cwd = "/no/such/dir" }));
        Assert.Contains("/no/such/dir", e2.Message);
    }

    [SkippableFact]
    public async Task Runs_as_another_user_and_group()
    {
        Requires.Root();
        var (r, o, e) = await Run(new ExecRequest { Argv =
            ["sh", "-c", "id -u; id -g; id -G; cat /proc/self/status | grep -E '^(Uid|Gid|SigIgn)'"], Uid = 65534,
            Gid = 65534, Groups = [65534, 100] });
        Assert.True(r.ExitCode == 0, e);
        var lines = o.Split('\n');
        Assert.Equal("65534", lines[0]);
        Assert.Equal("65534", lines[1]);
        Assert.Equal("65534 100", lines[2]);
        Assert.Contains("Uid:\t65534\t65534\t65534\t65534", o);
        // The re-exec must not leak the runtime's ignored SIGPIPE into the command.
        Assert.Contains("SigIgn:\t0000000000000000", o);
    }

    [Fact]
    public async Task Runs_on_a_pty_with_its_size_and_follows_resizes()
    {
        var o = new CaptureStream();
        var stdin = new FeedStream();
        await using var p = await Client.StartExecAsync(
            new ExecRequest { Argv = ["sh", "-c",
                "test -t 0 && test -t 1 && test -t 2 && echo is-a-tty; stty size; read x; stty size; echo err-on-tty " +
                ">&2"], Tty = true, Rows = 33, Cols = 101 },
            stdin, o, null);
        await o.WaitForAsync("33 101");
        Assert.Contains("is-a-tty", o.Text);
        await p.ResizeAsync(40, 120);
        stdin.Feed("go\n");
        var r = await p.WaitAsync();
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("40 120", o.Text);
        Assert.Contains("err-on-tty", o.Text); // stderr is the terminal too
    }

    [Fact]
    public async Task A_pty_exec_sees_end_of_input_and_has_a_controlling_terminal()
    {
        var o = new CaptureStream();
        var stdin = new FeedStream();
        stdin.Feed("hello\n");
        stdin.End();
        await using var p = await Client.StartExecAsync(
            new ExecRequest { Argv = ["sh", "-c", "cat; echo eof-seen; tty; ps -o tty= -p $$"], Tty = true }, stdin, o,
            null);
        var r = await p.WaitAsync();
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("hello", o.Text);
        Assert.Contains("eof-seen", o.Text);
        Assert.Contains("/dev/pts/", o.Text);
        Assert.Contains("pts/", o.Text.Split("/dev/pts/")[1]);
    }
}

/// <summary>A stdout that takes one write and then blocks every further write until released.</summary>
sealed class StallingStream(Task gate) : Stream
{
    long _received;
    public long Received => Interlocked.Read(ref _received);

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken ct = default)
    {
        Interlocked.Add(ref _received, buffer.Length);
        await gate;
    }

    public override void Write(byte[] buffer, int offset, int count) =>
        WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();
    public override bool CanRead => false;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set =>
        throw new NotSupportedException(); }
    public override void Flush() { }
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
}
