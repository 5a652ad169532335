using System.Net.Sockets;
using System.Text;
using Hull.Linux;
using Hull.Oci;
using Hull.TestSupport;
using Xunit;

namespace Hull.Containers.Tests;

[Collection("oci")]
public class TerminalTests(OciHarnessFixture f)
{
    OciHarness H => f.H;

    /// <summary>Listens on a console socket and returns the pty master the runtime sends.</summary>
    static async Task<SafeFd> ReceiveMaster(Socket listener)
    {
        using var conn = await listener.AcceptAsync();
        var (fd, _) = UnixSockets.ReceiveFd(new SafeFd((int)conn.Handle, owns: false));
        return fd;
    }

    static string ReadAll(SafeFd master)
    {
        var sb = new StringBuilder();
        var buf = new byte[4096];
        while (true)
        {
            int n;
            try { n = Sys.Read(master, buf); } catch (LinuxException e) when (e.Errno == Errors.EIO) { break; }
            if (n == 0) break;
            sb.Append(Encoding.UTF8.GetString(buf, 0, n));
        }
        return sb.ToString();
    }

    [SkippableFact]
    public async Task Create_with_a_terminal_hands_the_pty_master_to_the_console_socket()
    {
        var sockPath = Path.Combine(H.Dir.Path, "console.sock");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(sockPath));
        listener.Listen();
        var id = H.NewId();
        var b = H.Bundle(s => { s.Process!.Terminal = true; s.Process.ConsoleSize =
            new Box { Height = 33, Width = 101 }; },
            "sh", "-c", "tty; stty size; test -t 0 && echo interactive; read line; echo got=$line");
        var masterTask = ReceiveMaster(listener);
        var (code, _, e) = H.Run("create", "--bundle", b, "--console-socket", sockPath, id);
        Assert.True(code == 0, e);
        using var master = await masterTask.WaitAsync(TimeSpan.FromSeconds(10));
        try
        {
            Assert.Equal(0, H.Run("start", id).Code);
            Sys.WriteAll(master, "hello\n"u8);
            var output = ReadAll(master).Replace("\r", "");
            Assert.Contains("/dev/pts/0", output);
            Assert.Contains("33 101", output);
            Assert.Contains("interactive", output);
            Assert.Contains("got=hello", output);
        }
        finally { H.Run("delete", "--force", id); }
    }

    [SkippableFact]
    public async Task Exec_with_a_terminal()
    {
        var id = H.NewId();
        Assert.Equal(0, H.Run("run", "-d", "--bundle", H.Bundle(null, "sleep", "100"), id).Code);
        try
        {
            var sockPath = Path.Combine(H.Dir.Path, "exec-console.sock");
            using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            listener.Bind(new UnixDomainSocketEndPoint(sockPath));
            listener.Listen();
            var masterTask = ReceiveMaster(listener);
            var run = Task.Run(() => H.Run("exec", "-t", "--console-socket", sockPath, id, "sh", "-c",
                "tty; test -t 1 && echo isatty; exit 4"));
            using var master = await masterTask.WaitAsync(TimeSpan.FromSeconds(10));
            var output = ReadAll(master).Replace("\r", "");
            var (code, _, e) = await run.WaitAsync(TimeSpan.FromSeconds(30));
            Assert.True(code == 4, $"exit {code}: {e}");
            Assert.Contains("/dev/pts/", output);
            Assert.Contains("isatty", output);
        }
        finally { H.Run("delete", "--force", id); }
    }
}
