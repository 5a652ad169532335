using System.Runtime.InteropServices;
using Hull.Containers;
using Hull.Linux;
using Microsoft.Win32.SafeHandles;

namespace Hull.Instances.Containers;

/// <summary>An exec in a container: the engine spawns the process into the container's namespaces and cgroup with
/// stdio on pipes, or on a pty allocated from the container's own devpts.</summary>
sealed class ContainerExec : IExecSession
{
    readonly SpawnedChild _child;
    readonly SafeFd? _master;
    readonly List<Stream> _streams = [];
    public Stream Stdin { get; }
    public Stream Stdout { get; }
    public Stream? Stderr { get; }
    public Task<int> Exit { get; }

    ContainerExec(SpawnedChild child, SafeFd? master, Stream stdin, Stream stdout, Stream? stderr)
    {
        _child = child;
        _master = master;
        Stdin = stdin;
        Stdout = stdout;
        Stderr = stderr;
        _streams.AddRange(new[] { stdin, stdout, stderr }.OfType<Stream>().Distinct());
        Exit = Task.Factory.StartNew(() =>
        {
            try { return Sys.ExitCode(Sys.WaitPid(child.Pid)); }
            catch (LinuxException) { return 128 + Signals.SIGKILL; }
        }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    public static IExecSession Failed(int code, string message, bool tty) => new FailedExecSession(code, message, tty);

    static FileStream Wrap(SafeFd fd, FileAccess access) => new(new SafeFileHandle(fd.Detach(), true), access, 1, false);

    public static IExecSession StartPipes(ContainerEngine engine, string id, Hull.Oci.Process p)
    {
        var (inR, inW) = Sys.Pipe();
        var (outR, outW) = Sys.Pipe();
        var (errR, errW) = Sys.Pipe();
        try
        {
            SpawnedChild child;
            using (inR) using (outW) using (errW)
                child = engine.Exec(new ExecOptions { Id = id, Process = p, Stdio = [inR, outW, errW] });
            return new ContainerExec(child, null, Wrap(inW, FileAccess.Write), Wrap(outR, FileAccess.Read), Wrap(errR, FileAccess.Read));
        }
        catch
        {
            foreach (var f in new[] { inW, outR, errR }) f.Dispose();
            throw;
        }
    }

    public static IExecSession StartPty(ContainerEngine engine, string id, int initPid, Hull.Oci.Process p, int width, int height)
    {
        // The pty comes from the container's own devpts instance, so the process sees a /dev/pts/N that exists there.
        var master = Sys.Open($"/proc/{initPid}/root/dev/pts/ptmx", O.RDWR | O.NOCTTY);
        try
        {
            Sys.Check(Libc.unlockpt(master.Fd), "unlockpt");
            var sfd = Libc.ioctl(master.Fd, 0x5441 /* TIOCGPTPEER */, O.RDWR | O.NOCTTY | O.CLOEXEC);
            if (sfd < 0) throw LinuxException.FromLastError("TIOCGPTPEER");
            SetSize(master, width, height);
            SpawnedChild child;
            using (var slave = new SafeFd(sfd))
                child = engine.Exec(new ExecOptions { Id = id, Process = p, Stdio = [slave, slave, slave], StdioIsTerminal = true });
            var dup = Libc.fcntl(master.Fd, 1030 /* F_DUPFD_CLOEXEC */, 3);
            if (dup < 0) throw LinuxException.FromLastError("dup pty master");
            var stream = new FileStream(new SafeFileHandle(dup, true), FileAccess.ReadWrite, 1, false);
            return new ContainerExec(child, master, stream, stream, null);
        }
        catch
        {
            master.Dispose();
            throw;
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    struct WinSize { public ushort Rows, Cols, X, Y; }

    static unsafe void SetSize(SafeFd fd, int w, int h)
    {
        var ws = new WinSize { Rows = (ushort)Math.Clamp(h, 1, ushort.MaxValue), Cols = (ushort)Math.Clamp(w, 1, ushort.MaxValue) };
        Libc.ioctl(fd.Fd, 0x5414 /* TIOCSWINSZ */, (nint)(&ws));
    }

    public void Resize(int width, int height)
    {
        if (_master is not null && !_master.IsClosed) SetSize(_master, width, height);
    }

    public void Signal(int signal)
    {
        if (!Exit.IsCompleted) Sys.PidfdSendSignal(_child.Pidfd, signal);
    }

    public async ValueTask DisposeAsync()
    {
        if (!Exit.IsCompleted) { try { Sys.PidfdSendSignal(_child.Pidfd, Signals.SIGKILL); } catch (LinuxException) { } }
        try { await Exit.WaitAsync(TimeSpan.FromSeconds(10)); } catch (TimeoutException) { }
        foreach (var s in _streams) await s.DisposeAsync();
        _master?.Dispose();
        _child.Dispose();
    }
}
