using System.Runtime.InteropServices;
using System.Text.Json;
using Hull.Containers;
using Hull.Linux;
using Microsoft.Win32.SafeHandles;

namespace Hull.Instances.Containers;

/// <summary>An exec in a container, with stdio on pipes or on a pty allocated from the container's own devpts.
/// hulld never spawns into a container itself: its spawn shim would share hulld's memory (CLONE_VM) while visible
/// in the container. A fresh hull-oci does it (<c>hull-oci exec --hull-report-fd</c>, running from a sealed view of
/// itself, non-dumpable), hands back the process's pidfd for signals, and exits with the process's exit code.</summary>
sealed class ContainerExec : IExecSession
{
    readonly SpawnedChild _child;
    readonly SafeFd _process;
    readonly SafeFd? _master;
    readonly List<Stream> _streams = [];
    public Stream Stdin { get; }
    public Stream Stdout { get; }
    public Stream? Stderr { get; }
    public Task<int> Exit { get; }

    ContainerExec((SpawnedChild Runtime, SafeFd Process) child, SafeFd? master, Stream stdin, Stream stdout,
        Stream? stderr)
    {
        _child = child.Runtime;
        _process = child.Process;
        _master = master;
        Stdin = stdin;
        Stdout = stdout;
        Stderr = stderr;
        _streams.AddRange(new[] { stdin, stdout, stderr }.OfType<Stream>().Distinct());
        Exit = Task.Factory.StartNew(() =>
        {
            try { return Sys.ExitCode(Sys.WaitPid(child.Runtime.Pid)); }
            catch (LinuxException) { return 128 + Signals.SIGKILL; }
        }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    public static IExecSession Failed(int code, string message, bool tty) => new FailedExecSession(code, message, tty);

    static FileStream Wrap(SafeFd fd, FileAccess access) =>
        new(new SafeFileHandle(fd.Detach(), true), access, 1, false);

    public static IExecSession StartPipes(string root, string id, Hull.Oci.Process p)
    {
        var (inR, inW) = Sys.Pipe();
        var (outR, outW) = Sys.Pipe();
        var (errR, errW) = Sys.Pipe();
        try
        {
            (SpawnedChild, SafeFd) child;
            using (inR) using (outW) using (errW)
                child = StartRuntime(root, id, p, [inR, outW, errW], tty: false);
            return new ContainerExec(child, null, Wrap(inW, FileAccess.Write), Wrap(outR, FileAccess.Read),
                Wrap(errR, FileAccess.Read));
        }
        catch
        {
            foreach (var f in new[] { inW, outR, errR }) f.Dispose();
            throw;
        }
    }

    public static IExecSession StartPty(string root, string id, int initPid, Hull.Oci.Process p, int width, int height)
    {
        // The pty comes from the container's own devpts instance, so the process sees a /dev/pts/N that exists there.
        var master = Sys.Open($"/proc/{initPid}/root/dev/pts/ptmx", O.RDWR | O.NOCTTY);
        try
        {
            Sys.Check(Libc.unlockpt(master.Fd), "unlockpt");
            var sfd = Libc.ioctl(master.Fd, 0x5441 /* TIOCGPTPEER */, O.RDWR | O.NOCTTY | O.CLOEXEC);
            if (sfd < 0) throw LinuxException.FromLastError("TIOCGPTPEER");
            SetSize(master, width, height);
            (SpawnedChild, SafeFd) child;
            using (var slave = new SafeFd(sfd))
                child = StartRuntime(root, id, p, [slave, slave, slave], tty: true);
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

    /// <summary>Runs <c>hull-oci exec</c> for the process with <paramref name="stdio"/> as its fds 0-2 and waits
    /// for its report: the process's pidfd, or the exec's error (a ContainerException with its exit code).</summary>
    static (SpawnedChild Runtime, SafeFd Process) StartRuntime(string root, string id, Hull.Oci.Process p,
        IReadOnlyList<SafeFd> stdio, bool tty)
    {
        var json = JsonSerializer.SerializeToUtf8Bytes(p, Hull.Oci.OciJson.Default.Process);
        var (procR, procW) = Sys.Pipe();
        var (mine, theirs) = Sys.SocketPair();
        SpawnedChild runtime;
        using (mine)
        {
            using (procR) using (theirs)
            {
                var req = new SpawnRequest
                {
                    Path = ContainerEngine.InitBinary,
                    Argv = ["hull-oci", "--root", root, "exec", "--process", "/proc/self/fd/3",
                        $"--{ContainerEngine.ExecReportFdFlag}=4",
                        .. tty ? [$"--{ContainerEngine.ExecStdioTtyFlag}"] : Array.Empty<string>(), id],
                    Env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                };
                for (var i = 0; i < 3; i++) req.Fds.Add((stdio[i], i));
                req.Fds.Add((procR, 3));
                req.Fds.Add((theirs, 4));
                try { runtime = Spawner.Spawn(req); }
                catch (SpawnException e)
                {
                    procW.Dispose();
                    throw new ContainerException($"starting hull-oci for the exec: {e.Message}");
                }
            }
            // hull-oci reads the process (the pipe holds 64 KiB; a larger one is read while this writes).
            _ = Task.Run(() =>
            {
                using (procW) try { Sys.WriteAll(procW, json, "process for hull-oci exec"); } catch (LinuxException) { }
            });
            var (fd, text) = UnixSockets.ReceiveMessage(mine);
            if (fd is not null && text == "ok") return (runtime, fd);
            fd?.Dispose();
            var status = Sys.WaitPid(runtime.Pid);
            runtime.Dispose();
            var parts = text.Split(' ', 3);
            if (parts is ["error", var c, var msg] && int.TryParse(c, out var code))
                throw new ContainerException(msg) { ExitCode = code };
            throw new ContainerException($"hull-oci exec ({ContainerEngine.InitBinary}) ended with "
                + $"{Sys.ExitCode(status)} without reporting the exec's outcome: see hulld's log");
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    struct WinSize { public ushort Rows, Cols, X, Y; }

    static unsafe void SetSize(SafeFd fd, int w, int h)
    {
        var ws = new WinSize { Rows = (ushort)Math.Clamp(h, 1, ushort.MaxValue),
            Cols = (ushort)Math.Clamp(w, 1, ushort.MaxValue) };
        Libc.ioctl(fd.Fd, 0x5414 /* TIOCSWINSZ */, (nint)(&ws));
    }

    public void Resize(int width, int height)
    {
        if (_master is not null && !_master.IsClosed) SetSize(_master, width, height);
    }

    public void Signal(int signal)
    {
        if (!Exit.IsCompleted) Sys.PidfdSendSignal(_process, signal);
    }

    public async ValueTask DisposeAsync()
    {
        if (!Exit.IsCompleted) { try { Sys.PidfdSendSignal(_process, Signals.SIGKILL); } catch (LinuxException) { } }
        try { await Exit.WaitAsync(TimeSpan.FromSeconds(10)); } catch (TimeoutException) { }
        foreach (var s in _streams) await s.DisposeAsync();
        _master?.Dispose();
        _process.Dispose();
        _child.Dispose();
    }
}
