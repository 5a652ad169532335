using System.Buffers.Binary;

namespace Hull.Agent.Protocol;

/// <summary>Frame types. JSON payloads (via <see cref="AgentJson"/>) only in control frames; data frames are raw
/// bytes.</summary>
public enum FrameType : byte
{
    /// <summary>Host to agent, session 0: starts a connection (JSON <see cref="HelloMessage"/>).</summary>
    Hello = 1,
    /// <summary>Agent to host, session 0: the agent is ready (JSON <see cref="ReadyMessage"/>). Sent at start (nonce 0)
    /// and as the answer to every Hello.</summary>
    Ready = 2,
    /// <summary>Host to agent on a new session: asks for a <see cref="Pong"/>.</summary>
    Ping = 3,
    /// <summary>Agent to host: JSON <see cref="ReadyMessage"/> with the current guest info.</summary>
    Pong = 4,

    ExecStart = 10,
    ExecStarted = 11,
    ExecExit = 12,
    /// <summary>Host to agent: 4 bytes, rows then cols (u16 little endian each).</summary>
    Resize = 13,
    /// <summary>Host to agent: 4 bytes, the signal number (i32 little endian).</summary>
    Signal = 14,

    PushStart = 20,
    PullStart = 21,
    Stat = 22,
    Mkdir = 23,
    Remove = 24,
    Power = 25,
    /// <summary>
    /// Host to agent: list a directory (JSON <see cref="PathRequest"/>). The answer is one or more Result frames of
    /// JSON <see cref="DirectoryListing"/>; the last has <c>more: false</c>.
    /// </summary>
    List = 26,

    /// <summary>Agent to host: the operation's successful outcome (JSON <see cref="FileStat"/> or
    /// <see cref="OkMessage"/>).</summary>
    Result = 30,
    /// <summary>Agent to host: the operation failed (JSON <see cref="ErrorMessage"/>); the session is over.</summary>
    Error = 31,

    /// <summary>Bytes of one stream (the header's stream byte): counts against the receiver's window.</summary>
    Data = 40,
    /// <summary>End of one stream.</summary>
    Eof = 41,
    /// <summary>Window update: 4 bytes, how many more bytes the sender may send on that stream.</summary>
    Window = 42,
    /// <summary>Host to agent: abandon the session (an unfinished push is removed, a pull stops).</summary>
    Cancel = 43,
}

/// <summary>Stream numbers inside a session (the header's stream byte).</summary>
public static class StreamId
{
    public const byte Stdin = 0, Stdout = 1, Stderr = 2;
    /// <summary>File contents: pushed from host to agent, or pulled from agent to host.</summary>
    public const byte File = 3;
}

/// <summary>
/// Frame layout (16-byte header, little endian), then the payload:
/// <code>
///  0  u16 magic 0xA748     4  u32 session     12 u32 check (FNV-1a of bytes 0..11)
///  2  u8  type             8  u32 payload length
///  3  u8  stream
/// </code>
/// </summary>
public static class Wire
{
    public const int Version = 1;
    public const int HeaderSize = 16;
    public const ushort Magic = 0xA748;
    /// <summary>Largest payload a frame may carry; a header announcing more is corrupt (the reader resyncs).</summary>
    public const int MaxPayload = 64 * 1024;
    /// <summary>Largest data chunk a sender puts in one Data frame.</summary>
    public const int ChunkSize = 32 * 1024;
    /// <summary>Initial credit of every stream of every session, in each direction.</summary>
    public const int InitialWindow = 256 * 1024;

    /// <summary>
    /// The sync sequence. Sent by the host before every Hello and by the agent before every Ready. A reader that
    /// does not know where it is in the byte stream (start, reconnect, corrupt header) scans for it and resumes
    /// framing right after it. Its first byte can never start a valid header.
    /// </summary>
    public static ReadOnlySpan<byte> Sync =>
        [0xFF, 0x00, 0x48, 0x55, 0x4C, 0x4C, 0x53, 0x59, 0x4E, 0x43, 0x00, 0xFF, 0xA5, 0x5A, 0xC3, 0x3C];

    public static void WriteHeader(Span<byte> h, FrameType type, byte stream, uint session, int length)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(h, Magic);
        h[2] = (byte)type;
        h[3] = stream;
        BinaryPrimitives.WriteUInt32LittleEndian(h[4..], session);
        BinaryPrimitives.WriteUInt32LittleEndian(h[8..], (uint)length);
        BinaryPrimitives.WriteUInt32LittleEndian(h[12..], Check(h[..12]));
    }

    /// <summary>Encodes a whole frame into one buffer (written with one write, so frames never interleave).</summary>
    public static byte[] Encode(FrameType type, byte stream, uint session, ReadOnlySpan<byte> payload)
    {
        if (payload.Length > MaxPayload) throw new ArgumentException(
            $"frame payload of {payload.Length} bytes exceeds {MaxPayload}");
        var buf = new byte[HeaderSize + payload.Length];
        WriteHeader(buf, type, stream, session, payload.Length);
        payload.CopyTo(buf.AsSpan(HeaderSize));
        return buf;
    }

    public static bool TryParseHeader(ReadOnlySpan<byte> h, out FrameType type, out byte stream, out uint session,
        out int length)
    {
        type = 0; stream = 0; session = 0; length = 0;
        if (BinaryPrimitives.ReadUInt16LittleEndian(h) != Magic) return false;
        if (BinaryPrimitives.ReadUInt32LittleEndian(h[12..]) != Check(h[..12])) return false;
        var len = BinaryPrimitives.ReadUInt32LittleEndian(h[8..]);
        if (len > MaxPayload) return false;
        type = (FrameType)h[2];
        stream = h[3];
        session = BinaryPrimitives.ReadUInt32LittleEndian(h[4..]);
        length = (int)len;
        return true;
    }

    static uint Check(ReadOnlySpan<byte> b)
    {
        var h = 2166136261u;
        foreach (var x in b) h = (h ^ x) * 16777619u;
        return h;
    }

    public static byte[] U32(uint v)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, v);
        return b;
    }
}

/// <summary>One received frame. The payload buffer is owned by the frame.</summary>
public readonly record struct Frame(FrameType Type, byte Stream, uint Session, byte[] Payload);

/// <summary>What the <see cref="FrameReader"/> reports besides frames.</summary>
public enum ReadOutcome { Frame, Synced, EndOfStream }

/// <summary>
/// Reads frames from a byte stream that may contain garbage: at start, or after a corrupt header, it scans for
/// <see cref="Wire.Sync"/> and resumes right after it. Not thread-safe: one reader loop per stream.
/// </summary>
public sealed class FrameReader(Stream stream)
{
    readonly byte[] _buf = new byte[Wire.MaxPayload + Wire.HeaderSize + 64 * 1024];
    int _start, _end;
    bool _synced;

    /// <summary>Bytes skipped while looking for the sync sequence (diagnostics).</summary>
    public long SkippedBytes { get; private set; }

    /// <summary>Forgets where it is: the next read scans for the sync sequence again (used after a
    /// disconnect).</summary>
    public void Desync()
    {
        _synced = false;
        _start = _end = 0;
    }

    /// <summary>Reads the next frame; returns Synced when a sync sequence was found, EndOfStream at end of
    /// stream.</summary>
    public async ValueTask<(ReadOutcome Outcome, Frame Frame)> ReadAsync(CancellationToken ct)
    {
        while (true)
        {
            if (!_synced)
            {
                var i = _buf.AsSpan(_start, _end - _start).IndexOf(Wire.Sync);
                if (i >= 0)
                {
                    SkippedBytes += i;
                    _start += i + Wire.Sync.Length;
                    _synced = true;
                    return (ReadOutcome.Synced, default);
                }
                // Keep the tail that could be the start of a sync sequence.
                var keep = Math.Min(_end - _start, Wire.Sync.Length - 1);
                SkippedBytes += _end - _start - keep;
                _start = _end - keep;
                if (!await FillAsync(keep + 1, ct)) return (ReadOutcome.EndOfStream, default);
                continue;
            }
            if (!await FillAsync(Wire.HeaderSize, ct)) return (ReadOutcome.EndOfStream, default);
            var h = _buf.AsSpan(_start, Wire.HeaderSize);
            if (!Wire.TryParseHeader(h, out var type, out var st, out var session, out var len))
            {
                // Corrupt or foreign bytes (for instance a sync sequence after a peer restart): rescan from here.
                _synced = false;
                continue;
            }
            if (!await FillAsync(Wire.HeaderSize + len, ct)) return (ReadOutcome.EndOfStream, default);
            var payload = _buf.AsSpan(_start + Wire.HeaderSize, len).ToArray();
            _start += Wire.HeaderSize + len;
            return (ReadOutcome.Frame, new Frame(type, st, session, payload));
        }
    }

    /// <summary>Makes at least <paramref name="n"/> unread bytes available; false at end of stream.</summary>
    async ValueTask<bool> FillAsync(int n, CancellationToken ct)
    {
        if (_end - _start >= n) return true;
        if (_start > 0)
        {
            Buffer.BlockCopy(_buf, _start, _buf, 0, _end - _start);
            _end -= _start;
            _start = 0;
        }
        while (_end - _start < n)
        {
            var r = await stream.ReadAsync(_buf.AsMemory(_end), ct).ConfigureAwait(false);
            if (r == 0) return false;
            _end += r;
        }
        return true;
    }
}

/// <summary>
/// Send credit for one stream: the sender takes credit before sending data and the receiver returns it with
/// Window frames as it consumes the data. Waiting is asynchronous; <see cref="Close"/> wakes every waiter.
/// </summary>
public sealed class Credit(int initial = Wire.InitialWindow)
{
    readonly object _lock = new();
    long _available = initial;
    bool _closed;
    TaskCompletionSource? _waiter;

    public long Available { get { lock (_lock) return _available; } }

    public void Add(long n)
    {
        TaskCompletionSource? w;
        lock (_lock)
        {
            _available += n;
            w = _waiter;
            _waiter = null;
        }
        w?.TrySetResult();
    }

    public void Close()
    {
        TaskCompletionSource? w;
        lock (_lock)
        {
            _closed = true;
            w = _waiter;
            _waiter = null;
        }
        w?.TrySetResult();
    }

    /// <summary>Takes between 1 and <paramref name="max"/> bytes of credit; 0 when closed.</summary>
    public async ValueTask<int> TakeAsync(int max, CancellationToken ct)
    {
        while (true)
        {
            Task wait;
            lock (_lock)
            {
                if (_closed) return 0;
                if (_available > 0)
                {
                    var n = (int)Math.Min(max, _available);
                    _available -= n;
                    return n;
                }
                _waiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                wait = _waiter.Task;
            }
            await wait.WaitAsync(ct).ConfigureAwait(false);
        }
    }

    /// <summary>Blocking variant for the agent's dedicated I/O threads.</summary>
    public int Take(int max, CancellationToken ct) => TakeAsync(max, ct).AsTask().GetAwaiter().GetResult();
}
