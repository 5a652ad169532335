using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Hull.Linux;
using Hull.Oci;
using Hull.Seccomp;
using Xunit;

namespace Hull.Containers.Tests;

/// <summary>
/// A seccomp agent for the tests: listens on a unix socket (linux.seccomp.listenerPath), takes the container process
/// state and the notify fd from each connection, and answers every notification with an errno. Dispose stops it.
/// </summary>
sealed unsafe class TestSeccompAgent : IDisposable
{
    readonly Socket _server;
    readonly Thread _accept;
    readonly List<Thread> _responders = [];
    volatile bool _stop;
    readonly int _errno;

    public string SocketPath { get; }
    /// <summary>Each state received, in order.</summary>
    public List<ContainerProcessState> States { get; } = [];
    /// <summary>The syscall numbers answered.</summary>
    public List<(int Pid, uint Nr)> Answered { get; } = [];
    public List<string> Errors { get; } = [];

    public List<ContainerProcessState> StatesSnapshot() { lock (States) return [.. States]; }

    public TestSeccompAgent(string socketPath, int errno)
    {
        SocketPath = socketPath;
        _errno = errno;
        _server = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        _server.Bind(new UnixDomainSocketEndPoint(socketPath));
        _server.Listen(8);
        _accept = new Thread(AcceptLoop) { IsBackground = true, Name = "seccomp agent" };
        _accept.Start();
    }

    void AcceptLoop()
    {
        while (!_stop)
        {
            Socket conn;
            try { conn = _server.Accept(); }
            catch (Exception) { return; }   // disposed
            // The init connects at create and sends at start: one thread per connection.
            var t = new Thread(() => Handle(conn)) { IsBackground = true, Name = "seccomp agent connection" };
            lock (_responders) _responders.Add(t);
            t.Start();
        }
    }

    void Handle(Socket conn)
    {
        try
        {
            SafeFd fd;
            using (conn)
            {
                (fd, var first) = UnixSockets.ReceiveFd(new SafeFd((int)conn.Handle, owns: false));
                var json = new StringBuilder(first);
                var buf = new byte[4096];
                int n;
                while ((n = conn.Receive(buf)) > 0) json.Append(Encoding.UTF8.GetString(buf, 0, n));
                var state = JsonSerializer.Deserialize(json.ToString(), SeccompJson.Default.ContainerProcessState)!;
                lock (States) States.Add(state);
            }
            Respond(fd);
        }
        catch (Exception e) { lock (Errors) Errors.Add(e.ToString()); }
    }

    void Respond(SafeFd fd)
    {
        using (fd)
        {
            while (!_stop)
            {
                var p = new PollFd { Fd = fd.Fd, Events = 1 /* POLLIN */ };
                var r = Libc.poll(&p, 1, 100);
                if (r == 0) continue;
                if (r < 0 || (p.REvents & 1) == 0) return;       // POLLHUP: no process uses the filter any more
                try
                {
                    var n = SeccompNotify.Receive(fd);
                    lock (Answered) Answered.Add((n.Pid, n.Nr));
                    SeccompNotify.Respond(fd, n.Id, 0, _errno);
                }
                // the task went away meanwhile
                catch (LinuxException e) when (e.Errno == Hull.Linux.Errors.ENOENT) { }
            }
        }
    }

    public void Dispose()
    {
        if (_stop) return;
        _stop = true;
        _server.Dispose();
        _accept.Join();
        List<Thread> threads;
        lock (_responders) threads = [.. _responders];
        foreach (var t in threads) t.Join();
        File.Delete(SocketPath);
    }
}

/// <summary>SCMP_ACT_NOTIFY end to end through hull-oci: the container init and an exec'd process each hand their
/// notify fd, with the container process state, to the agent at listenerPath, which answers mkdir with
/// EDQUOT.</summary>
[Collection("oci")]
public class SeccompNotifyTests(OciHarnessFixture f)
{
    OciHarness H => f.H;
    const int EDQUOT = 122;

    static Hull.Oci.Seccomp NotifyMkdir(string listenerPath) => new()
    {
        DefaultAction = "SCMP_ACT_ALLOW",
        ListenerPath = listenerPath,
        ListenerMetadata = "hull-test-metadata",
        Syscalls = [new SeccompSyscall { Names = ["mkdir", "mkdirat"], Action = "SCMP_ACT_NOTIFY" }],
    };

    [SkippableFact]
    public void The_init_hands_its_notify_fd_to_the_agent()
    {
        var id = H.NewId();
        using var agent = new TestSeccompAgent(Path.Combine(H.Dir.Path, "agent-" + id + ".sock"), EDQUOT);
        var b = H.Bundle(s => s.Linux!.Seccomp = NotifyMkdir(agent.SocketPath), "sh", "-c",
            "mkdir /tmp/a 2>&1; echo rc=$?");
        var (code, o, e) = H.Run("run", "--bundle", b, id);
        Assert.True(code == 0, $"{o}{e}");
        Assert.Contains("Disk quota exceeded", o);
        Assert.Contains("rc=1", o);
        Assert.Empty(agent.Errors);
        var st = Assert.Single(agent.States);
        Assert.Equal(["seccompFd"], st.Fds);
        Assert.Equal("hull-test-metadata", st.Metadata);
        Assert.Equal(id, st.State.Id);
        Assert.True(st.Pid > 1);
        Assert.Equal(st.State.Pid, st.Pid);             // the host pid of the container process, as runc sends it
        Assert.Contains(agent.Answered, a => a.Nr is 83 or 258);
    }

    [SkippableFact]
    public void An_exec_hands_its_own_notify_fd_to_the_agent()
    {
        var id = H.NewId();
        using var agent = new TestSeccompAgent(Path.Combine(H.Dir.Path, "agent-" + id + ".sock"), EDQUOT);
        var b = H.Bundle(s => s.Linux!.Seccomp = NotifyMkdir(agent.SocketPath), "sleep", "100");
        var (code, o, e) = H.Run("run", "-d", "--bundle", b, id);
        Assert.True(code == 0, $"{o}{e}");
        try
        {
            var init = H.State(id).Pid;
            // The init sends its fd right after start; wait for it (bounded) so the order below is fixed.
            for (var i = 0; i < 1000 && !agent.StatesSnapshot().Any(x => x.Pid == init); i++) Thread.Sleep(10);
            Assert.Contains(agent.StatesSnapshot(), x => x.Pid == init);
            var (c2, o2, e2) = H.Run("exec", id, "sh", "-c",
                "mkdir /tmp/b 2>&1; echo rc=$?; ls -l /proc/$$/fd | grep -c seccomp; true");
            Assert.True(c2 == 0, $"{o2}{e2}");
            Assert.Contains("Disk quota exceeded", o2);
            Assert.Contains("rc=1", o2);
            Assert.EndsWith("0\n", o2);                       // the exec'd process does not hold the notify fd
            Assert.Empty(agent.Errors);
            var states = agent.StatesSnapshot();
            Assert.Equal(2, states.Count);
            var st = Assert.Single(states, x => x.Pid != init);
            Assert.Equal(["seccompFd"], st.Fds);
            Assert.Equal("hull-test-metadata", st.Metadata);
            Assert.Equal(id, st.State.Id);
            Assert.Equal("running", st.State.Status);
            Assert.Equal(init, st.State.Pid);
            Assert.NotEqual(init, st.Pid);
            Assert.Contains(agent.Answered, a => a.Pid != init && a.Nr is 83 or 258);

            // The fd is handed over before execve, so an exec that then fails still reports its own error.
            var (c4, _, e4) = H.Run("exec", id, "/no/such/program");
            Assert.Equal(127, c4);
            Assert.Contains("/no/such/program", e4);

            // Without a listener reachable the exec fails and leaves no process behind.
            agent.Dispose();
            var (c3, o3, e3) = H.Run("exec", id, "sh", "-c", "echo should-not-run");
            Assert.NotEqual(0, c3);
            Assert.DoesNotContain("should-not-run", o3);
            Assert.Contains("listener", e3);
        }
        finally { H.Run("delete", "--force", id); }
    }
}
