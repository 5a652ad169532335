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

    public static IExecSession Failed(int code, string message, bool tty) => new FailedExec(code, message, tty);

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

/// <summary>An exec whose program could not be started: no process, the message on stderr, exit 126 or 127.</summary>
sealed class FailedExec(int code, string message, bool tty) : IExecSession
{
    static MemoryStream Text(string s) => new(System.Text.Encoding.UTF8.GetBytes(s), false);
    public Stream Stdin { get; } = Stream.Null;
    public Stream Stdout { get; } = Text(tty ? message + "\r\n" : "");
    public Stream? Stderr { get; } = tty ? null : Text(message + "\n");
    public Task<int> Exit { get; } = Task.FromResult(code);
    public void Resize(int width, int height) { }
    public void Signal(int signal) { }
    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

/// <summary>Reads the console log; with follow it waits for more while the instance runs.</summary>
sealed class LogStream(string path, Func<bool> running, bool follow, bool fromEnd) : Stream
{
    FileStream? _f;
    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken ct = default)
    {
        while (true)
        {
            if (_f is null && File.Exists(path))
            {
                _f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, 1);
                if (fromEnd) _f.Seek(0, SeekOrigin.End);
            }
            if (_f is not null)
            {
                var n = await _f.ReadAsync(buffer, ct);
                if (n > 0) return n;
            }
            if (!follow || !running()) return 0;
            await Task.Delay(50, ct);
        }
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) _f?.Dispose();
        base.Dispose(disposing);
    }
}
