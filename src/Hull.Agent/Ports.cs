using System.Net.Sockets;
using Hull.Linux;

namespace Hull.Agent;

/// <summary>
/// Where the agent's byte stream comes from. A port outlives host connections: <see cref="Next"/> returns the
/// stream for the next host connection (for a virtio-serial port that is the same open device every time).
/// </summary>
public abstract class Port : IDisposable
{
    public abstract string Name { get; }
    public abstract string Describe { get; }
    /// <summary>Blocks until a host may be there; returns the stream to read frames from and write frames to.</summary>
    public abstract Stream Next(CancellationToken ct);
    public virtual void Dispose() { }
}

/// <summary>
/// A virtio-serial port (/dev/vportNpM). The device stays open; when no host is connected, read returns 0 at once
/// (the kernel wakes no reader on reconnect), so the agent re-polls every 200 ms and rescans for the sync sequence.
/// </summary>
public sealed class SerialPort(string path) : Port
{
    FdStream? _stream;
    public override string Name => "virtio-serial";
    public override string Describe => $"virtio-serial port {path}";

    public override Stream Next(CancellationToken ct)
    {
        if (_stream is null)
        {
            _stream = new FdStream(Sys.Open(path, O.RDWR | O.NOCTTY));
            return _stream;
        }
        ct.WaitHandle.WaitOne(200);
        return _stream;
    }

    public override void Dispose() => _stream?.Dispose();

    /// <summary>Finds the port named <paramref name="name"/> through sysfs (or the udev symlink).</summary>
    public static string? Find(string name)
    {
        var link = $"/dev/virtio-ports/{name}";
        if (File.Exists(link)) return link;
        if (!Directory.Exists("/sys/class/virtio-ports")) return null;
        foreach (var dir in Directory.GetDirectories("/sys/class/virtio-ports"))
        {
            try
            {
                if (File.ReadAllText(Path.Combine(dir, "name")).Trim() == name)
                {
                    var dev = "/dev/" + Path.GetFileName(dir);
                    if (File.Exists(dev)) return dev;
                }
            }
            catch (IOException) { }
        }
        return null;
    }
}

/// <summary>AF_VSOCK: listens on a port in the guest; each host connection is one accepted socket.</summary>
public sealed class VsockPort(uint port) : Port
{
    SafeFd? _listener;
    public override string Name => "vsock";
    public override string Describe => $"vsock port {port}";

    public override Stream Next(CancellationToken ct)
    {
        _listener ??= GuestSys.VsockListen(port);
        return new FdStream(GuestSys.Accept(_listener));
    }

    public override void Dispose() => _listener?.Dispose();
}

/// <summary>
/// A unix socket the agent listens on, standing in for the serial port (tests, or a host without a VM): one host
/// connection at a time; when the host drops it, the agent waits for the next one, exactly as a port outlives a host.
/// </summary>
public sealed class UnixListenPort : Port
{
    readonly string _path;
    readonly Socket _listener;

    public UnixListenPort(string path)
    {
        _path = path;
        if (File.Exists(path)) File.Delete(path);
        _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        _listener.Bind(new UnixDomainSocketEndPoint(path));
        _listener.Listen(4);
    }

    public override string Name => "unix";
    public override string Describe => $"unix socket {_path} (listening)";

    public override Stream Next(CancellationToken ct)
    {
        var s = _listener.AcceptAsync(ct).AsTask().GetAwaiter().GetResult();
        return new NetworkStream(s, ownsSocket: true);
    }

    public override void Dispose()
    {
        _listener.Dispose();
        try { File.Delete(_path); } catch (IOException) { }
    }
}

/// <summary>A unix socket the agent connects to (a host-side listener); reconnects after the host drops it.</summary>
public sealed class UnixConnectPort(string path) : Port
{
    bool _first = true;
    public override string Name => "unix";
    public override string Describe => $"unix socket {path} (connecting)";

    public override Stream Next(CancellationToken ct)
    {
        if (!_first) ct.WaitHandle.WaitOne(200);
        _first = false;
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                s.Connect(new UnixDomainSocketEndPoint(path));
                return new NetworkStream(s, ownsSocket: true);
            }
            catch (SocketException)
            {
                s.Dispose();
                ct.WaitHandle.WaitOne(200);
            }
        }
    }
}

/// <summary>A blocking stream over a kernel fd (a character device or a socket). Reads complete
/// synchronously.</summary>
public sealed class FdStream(SafeFd fd) : Stream
{
    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set =>
        throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        try { return Sys.Read(fd, buffer); }
        catch (LinuxException e) { throw new IOException(e.Message, e); }
    }

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken ct = default) =>
        ValueTask.FromResult(Read(buffer.Span));

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        try { Sys.WriteAll(fd, buffer, "write to the host channel"); }
        catch (LinuxException e) { throw new IOException(e.Message, e); }
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) fd.Dispose();
        base.Dispose(disposing);
    }
}
