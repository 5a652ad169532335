using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Hull.Agent.Protocol;
using Hull.TestSupport;
using Xunit;

namespace Hull.Agent.Tests;

/// <summary>The host drops the channel and comes back (daemon restart, migration): the agent resyncs and goes
/// on.</summary>
public class ReconnectTests
{
    static async Task WaitGone(int pid)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (Directory.Exists($"/proc/{pid}") && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.False(Directory.Exists($"/proc/{pid}"), $"process {pid} of the dropped connection is still there");
    }

    [Fact]
    public async Task Host_drops_the_connection_mid_exec_and_reconnects()
    {
        await using var h = await AgentHarness.StartAsync();
        int pid;
        await using (var first = await h.ConnectAsync())
        {
            var o = new CaptureStream();
            var p = await first.StartExecAsync(new ExecRequest { Argv = ["sh", "-c", "echo started; exec sleep 1000"] },
                new FeedStream(), o, null);
            pid = p.Pid;
            await o.WaitForAsync("started");
            Assert.True(Directory.Exists($"/proc/{pid}"));
            // Dispose drops the connection without asking the agent for anything.
        }
        await using var second = await h.ConnectAsync();
        Assert.Equal(1, second.EndedSessions);
        await WaitGone(pid);
        var o2 = new CaptureStream();
        var r = await second.ExecAsync(new ExecRequest { Argv = ["echo", "after reconnect"] }, null, o2, null);
        Assert.Equal(0, r.ExitCode);
        Assert.Equal("after reconnect\n", o2.Text);
    }

    [Fact]
    public async Task Host_drops_the_connection_mid_push_and_no_temporary_file_remains()
    {
        await using var h = await AgentHarness.StartAsync();
        var target = Path.Combine(h.Dir, "pushed");
        await using (var first = await h.ConnectAsync())
        {
            var src = new FeedStream();
            src.Feed(new string('x', 100_000));
            var push = first.PushFileAsync(new PushRequest { Path = target }, src);
            var deadline = DateTime.UtcNow.AddSeconds(30);
            while (!Directory.GetFiles(h.Dir).Any(f => f.Contains(".pushed.hull-push-"))
                && DateTime.UtcNow < deadline) await Task.Delay(20);
            Assert.Contains(Directory.GetFiles(h.Dir), f => f.Contains(".pushed.hull-push-"));
            await first.DisposeAsync();
            await Assert.ThrowsAnyAsync<Exception>(() => push);
        }
        await using var second = await h.ConnectAsync();
        Assert.Equal(1, second.EndedSessions);
        Assert.DoesNotContain(Directory.GetFiles(h.Dir), f => f.Contains("pushed"));
        var data = RandomNumberGenerator.GetBytes(300_000);
        await second.PushFileAsync(new PushRequest { Path = target }, new MemoryStream(data));
        Assert.Equal(data, await File.ReadAllBytesAsync(target));
    }

    [Fact]
    public async Task Resyncs_after_garbage_and_a_torn_frame_on_the_channel()
    {
        await using var h = await AgentHarness.StartAsync();
        // A previous host wrote half a frame and some noise before it went away: the new host's bytes follow them.
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await s.ConnectAsync(new UnixDomainSocketEndPoint(h.Socket));
        var stream = new NetworkStream(s, ownsSocket: true);
        var torn = Wire.Encode(FrameType.ExecStart, 0, 7,
            AgentJson.Encode(new ExecRequest { Argv = ["touch", Path.Combine(h.Dir, "must-not-exist")] },
            AgentJson.Default.ExecRequest));
        await stream.WriteAsync(RandomNumberGenerator.GetBytes(5000));
        await stream.WriteAsync(torn.AsMemory(0, torn.Length / 2));
        await stream.WriteAsync(Wire.Sync.ToArray().AsMemory(0, 7)); // a partial sync sequence, too
        await using var client = new AgentClient(stream);
        var g = await client.WaitReadyAsync(TimeSpan.FromSeconds(30));
        Assert.Equal("unix", g.Transport);
        var o = new CaptureStream();
        var r = await client.ExecAsync(new ExecRequest { Argv = ["echo", "ok"] }, null, o, null);
        Assert.Equal("ok\n", o.Text);
        Assert.False(File.Exists(Path.Combine(h.Dir, "must-not-exist")));
    }

    [Fact]
    public async Task An_agent_that_does_not_answer_times_out_clearly()
    {
        using var dir = new Hull.TestSupport.TempDir("hull-agent-silent");
        var path = Path.Combine(dir.Path, "silent.sock");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen(1);
        await using var client = await AgentClient.ConnectUnixAsync(path);
        using var peer = await listener.AcceptAsync();
        var e = await Assert.ThrowsAsync<AgentUnavailableException>(() =>
            client.WaitReadyAsync(TimeSpan.FromSeconds(2)));
        Assert.Equal("the Hull agent in the guest did not answer within 2 s: is the guest booted and the agent in " +
            "its image? see the VM console log", e.Message);
        // And nothing listening at all:
        var e2 = await Assert.ThrowsAsync<AgentUnavailableException>(() =>
            AgentClient.ConnectUnixAsync(Path.Combine(dir.Path, "none.sock")));
        Assert.Contains("none.sock", e2.Message);
    }

    [Fact]
    public async Task Operations_before_the_handshake_are_refused()
    {
        var wire = new MemoryStream();
        await using var client = new AgentClient(wire);
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => client.StatAsync("/"));
        Assert.Contains("WaitReadyAsync", e.Message);
        Assert.Equal(0, wire.Length); // nothing was sent
    }

    [Fact]
    public async Task Power_request_is_answered_before_the_agent_acts()
    {
        await using var h = await AgentHarness.StartAsync("--simulate-power");
        await using var c = await h.ConnectAsync();
        await Assert.ThrowsAsync<ArgumentException>(() => c.PowerAsync("explode"));
        await c.PowerAsync("poweroff");
        await h.Process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(0, h.Process.ExitCode);
        Assert.Contains("poweroff simulated", h.Log);
    }
}

public class WireTests
{
    static byte[] Frames(params (FrameType T, uint S, string P)[] frames) =>
        frames.SelectMany(f => Wire.Encode(f.T, 0, f.S, Encoding.UTF8.GetBytes(f.P))).ToArray();

    sealed class Trickle(byte[] data, int chunk) : MemoryStream(data)
    {
        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken ct = default) =>
            base.ReadAsync(buffer[..Math.Min(chunk, buffer.Length)], ct);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(4096)]
    public async Task Reader_skips_garbage_until_sync_and_rescans_after_a_corrupt_header(int chunk)
    {
        var bytes = new List<byte>();
        bytes.AddRange(Encoding.UTF8.GetBytes("boot noise \xff\x00HULL"));
        bytes.AddRange(Frames((FrameType.Data, 9, "ignored: before sync")));
        bytes.AddRange(Wire.Sync.ToArray());
        bytes.AddRange(Frames((FrameType.Data, 1, "one"), (FrameType.Data, 2, "two")));
        var corrupt = Frames((FrameType.Data, 3, "corrupt"));
        corrupt[5] ^= 0x40; // the header check catches it
        bytes.AddRange(corrupt);
        bytes.AddRange(Frames((FrameType.Data, 4, "lost: not yet resynced")));
        bytes.AddRange(Wire.Sync.ToArray());
        bytes.AddRange(Frames((FrameType.Data, 5, "five")));
        var r = new FrameReader(new Trickle(bytes.ToArray(), chunk));
        var seen = new List<string>();
        while (true)
        {
            var (o, f) = await r.ReadAsync(CancellationToken.None);
            if (o == ReadOutcome.EndOfStream) break;
            seen.Add(o == ReadOutcome.Synced ? "sync" : $"{f.Session}:{Encoding.UTF8.GetString(f.Payload)}");
        }
        Assert.Equal(["sync", "1:one", "2:two", "sync", "5:five"], seen);
    }

    [Fact]
    public void Header_rejects_oversized_lengths_and_sync_bytes()
    {
        var h = new byte[Wire.HeaderSize];
        Wire.WriteHeader(h, FrameType.Data, 1, 2, Wire.MaxPayload);
        Assert.True(Wire.TryParseHeader(h, out _, out _, out _, out var len));
        Assert.Equal(Wire.MaxPayload, len);
        Wire.WriteHeader(h, FrameType.Data, 1, 2, Wire.MaxPayload + 1);
        Assert.False(Wire.TryParseHeader(h, out _, out _, out _, out _));
        Assert.False(Wire.TryParseHeader(Wire.Sync, out _, out _, out _, out _));
        Assert.Throws<ArgumentException>(() => Wire.Encode(FrameType.Data, 0, 1, new byte[Wire.MaxPayload + 1]));
    }

    [Fact]
    public async Task Credit_blocks_at_zero_and_resumes_on_a_window_update()
    {
        var c = new Credit(10);
        Assert.Equal(8, await c.TakeAsync(8, CancellationToken.None));
        Assert.Equal(2, await c.TakeAsync(8, CancellationToken.None));
        var waiting = c.TakeAsync(8, CancellationToken.None).AsTask();
        await Task.Yield();
        Assert.False(waiting.IsCompleted);
        c.Add(5);
        Assert.Equal(5, await waiting);
        var closed = c.TakeAsync(8, CancellationToken.None).AsTask();
        c.Close();
        Assert.Equal(0, await closed);
    }
}

public class InitTests
{
    [SkippableFact]
    public async Task As_pid_1_the_agent_reaps_orphans()
    {
        Requires.Root();
        var unshare = Requires.Program("unshare");
        await using var h = await AgentHarness.StartWithPrefixAsync(
            [unshare, "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM"]);
        await using var c = await h.ConnectAsync();
        async Task<string> Sh(string script)
        {
            var o = new CaptureStream();
            var r = await c.ExecAsync(new ExecRequest { Argv = ["sh", "-c", script] }, null, o, null);
            Assert.True(r.ExitCode == 0, $"{script}: exit {r.ExitCode}; agent log:\n{h.Log}");
            return o.Text;
        }
        Assert.Contains("hull-agent", await Sh("tr '\\0' ' ' < /proc/1/cmdline"));
        // Short-lived execs are reaped by their own waiter (with their status), never by the orphan reaper.
        for (var i = 0; i < 40; i++) await Sh("true");
        // The background sleep outlives its shell, is re-parented to pid 1, and must not stay a zombie.
        await Sh("sleep 0.2 >/dev/null 2>&1 & exit 0");
        var deadline = DateTime.UtcNow.AddSeconds(30);
        string zombies;
        do
        {
            await Task.Delay(50);
            zombies = await Sh("grep -l '^State:.Z' /proc/[0-9]*/status 2>/dev/null; true");
        } while (zombies.Length > 0 && DateTime.UtcNow < deadline);
        Assert.Equal("", zombies);
    }
}
