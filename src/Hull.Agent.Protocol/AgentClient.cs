using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Threading.Channels;

namespace Hull.Agent.Protocol;

/// <summary>
/// The host side of the Hull agent protocol over one byte stream (the host end of a virtio-serial port, a vsock
/// connection, or any other <see cref="Stream"/>). One instance is one connection: after a disconnect, make a new
/// client on a new stream; its handshake resyncs the stream and ends the sessions the old connection left behind.
/// Thread-safe: any number of operations may run at once; each is its own session with its own flow control.
/// </summary>
public sealed class AgentClient : IExecTarget, IFileTarget, IAsyncDisposable
{
    readonly Stream _stream;
    readonly FrameReader _reader;
    readonly SemaphoreSlim _writeLock = new(1, 1);
    readonly ConcurrentDictionary<uint, Session> _sessions = new();
    readonly CancellationTokenSource _cts = new();
    readonly TaskCompletionSource<ReadyMessage> _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly string _clientName;
    readonly ulong _nonce = (ulong)Random.Shared.NextInt64(1, long.MaxValue);
    Task? _readLoop;
    int _nextSession;
    volatile Exception? _failure;

    public AgentClient(Stream stream, string clientName = "hull")
    {
        _stream = stream;
        _reader = new FrameReader(stream);
        _clientName = clientName;
    }

    /// <summary>Connects to a unix socket: the host end of the agent's channel (QEMU's chardev socket).</summary>
    public static async Task<AgentClient> ConnectUnixAsync(string path, CancellationToken ct = default)
    {
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await s.ConnectAsync(new UnixDomainSocketEndPoint(path), ct).ConfigureAwait(false);
        }
        catch (SocketException e)
        {
            s.Dispose();
            throw new AgentUnavailableException($"cannot connect to the agent channel {path}: {e.Message} (is the VM " +
                "running?)", e);
        }
        catch
        {
            s.Dispose();
            throw;
        }
        return new AgentClient(new NetworkStream(s, ownsSocket: true));
    }

    /// <summary>The guest as the agent described it in its last Ready or Pong.</summary>
    public GuestInfo? Guest { get; private set; }

    /// <summary>How many sessions of an earlier connection the agent ended when this one said hello.</summary>
    public int EndedSessions { get; private set; }

    /// <summary>
    /// Says hello (sync sequence + Hello, repeated every second until answered) and waits for the agent's Ready.
    /// </summary>
    public async Task<GuestInfo> WaitReadyAsync(TimeSpan timeout, CancellationToken ct = default)
    {
        _readLoop ??= Task.Run(ReadLoopAsync);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(ct, _cts.Token);
        linked.CancelAfter(timeout);
        try
        {
            var hello = AgentJson.Encode(new HelloMessage { Nonce = _nonce, Client = _clientName },
                AgentJson.Default.HelloMessage);
            var frame = new byte[Wire.Sync.Length + Wire.HeaderSize + hello.Length];
            Wire.Sync.CopyTo(frame);
            Wire.Encode(FrameType.Hello, 0, 0, hello).CopyTo(frame, Wire.Sync.Length);
            while (!_ready.Task.IsCompleted)
            {
                ThrowIfFailed();
                await WriteRawAsync(frame, linked.Token).ConfigureAwait(false);
                try { await _ready.Task.WaitAsync(TimeSpan.FromSeconds(1), linked.Token).ConfigureAwait(false); }
                catch (TimeoutException) { }
            }
            var ready = await _ready.Task.ConfigureAwait(false);
            return ready.Guest;
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested && !_cts.IsCancellationRequested)
        {
            throw new AgentUnavailableException("the Hull agent in the guest did not answer within " +
                $"{timeout.TotalSeconds:0.#} s: is the guest booted and the agent in its image? see the VM console " +
                "log");
        }
        catch (AgentUnavailableException) { throw; }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            throw Fail(new AgentUnavailableException($"the connection to the Hull agent failed: {e.Message}", e));
        }
    }

    /// <summary>Asks the agent for a fresh description of the guest (its uptime moves).</summary>
    public async Task<GuestInfo> PingAsync(CancellationToken ct = default)
    {
        await using var s = Open();
        await s.SendAsync(FrameType.Ping, 0, [], ct).ConfigureAwait(false);
        var f = await s.ReceiveAsync(ct).ConfigureAwait(false);
        if (f.Type != FrameType.Pong) throw Unexpected(f, "Pong");
        var r = AgentJson.Decode(f.Payload, AgentJson.Default.ReadyMessage);
        Guest = r.Guest;
        return r.Guest;
    }

    public async Task<ExecResult> ExecAsync(ExecRequest request, Stream? stdin, Stream stdout, Stream? stderr,
        CancellationToken ct = default)
    {
        await using var p = (ExecProcess)await StartExecAsync(request, stdin, stdout, stderr, ct).ConfigureAwait(false);
        using var reg = ct.Register(() => _ = p.SignalAsync(9,
            CancellationToken.None).ContinueWith(t => _ = t.Exception, TaskScheduler.Default));
        var result = await p.WaitAsync(CancellationToken.None).ConfigureAwait(false);
        ct.ThrowIfCancellationRequested();
        return result;
    }

    public async Task<IExecProcess> StartExecAsync(ExecRequest request, Stream? stdin, Stream stdout, Stream? stderr,
        CancellationToken ct = default)
    {
        if (request.Argv.Count == 0) throw new ArgumentException("exec needs a command (argv is empty)",
            nameof(request));
        request.Stdin = stdin is not null;
        var s = Open();
        try
        {
            var p = new ExecProcess(s, stdin, stdout, stderr ?? Stream.Null);
            await s.SendAsync(FrameType.ExecStart, 0, AgentJson.Encode(request, AgentJson.Default.ExecRequest),
                ct).ConfigureAwait(false);
            await p.StartAsync(ct).ConfigureAwait(false);
            return p;
        }
        catch
        {
            await s.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    public async Task<FileStat> PushFileAsync(PushRequest request, Stream content, CancellationToken ct = default)
    {
        if (string.IsNullOrEmpty(request.Path) || request.Path[0] != '/') throw new ArgumentException(
            $"push needs an absolute path in the guest, not '{request.Path}'", nameof(request));
        await using var s = Open();
        await s.SendAsync(FrameType.PushStart, 0, AgentJson.Encode(request, AgentJson.Default.PushRequest),
            ct).ConfigureAwait(false);
        var buf = new byte[Wire.ChunkSize];
        // Reading the content also stops when the session fails (connection lost, agent error).
        using var reading = CancellationTokenSource.CreateLinkedTokenSource(ct, s.Failed);
        try
        {
            while (true)
            {
                var n = await s.Credit.TakeAsync(buf.Length, ct).ConfigureAwait(false);
                if (n == 0) break; // the agent ended the session (an error follows)
                int r;
                try { r = await content.ReadAsync(buf.AsMemory(0, n), reading.Token).ConfigureAwait(false); }
                catch (OperationCanceledException) when (!ct.IsCancellationRequested
                    && s.Failed.IsCancellationRequested) { break; }
                if (r < n) s.Credit.Add(n - r);
                if (r == 0)
                {
                    await s.SendAsync(FrameType.Eof, StreamId.File, [], ct).ConfigureAwait(false);
                    break;
                }
                await s.SendAsync(FrameType.Data, StreamId.File, buf.AsSpan(0, r).ToArray(), ct).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is not AgentUnavailableException)
        {
            // The content failed or the caller gave up: the agent removes its temporary file.
            await s.TrySendAsync(FrameType.Cancel, 0, []).ConfigureAwait(false);
            throw;
        }
        var f = await s.ReceiveAsync(ct).ConfigureAwait(false);
        if (f.Type != FrameType.Result) throw Unexpected(f, "Result");
        return AgentJson.Decode(f.Payload, AgentJson.Default.FileStat);
    }

    public async Task<FileStat> PullFileAsync(string path, Stream destination, CancellationToken ct = default)
    {
        await using var s = Open();
        await s.SendAsync(FrameType.PullStart, 0,
            AgentJson.Encode(new PathRequest { Path = path }, AgentJson.Default.PathRequest), ct).ConfigureAwait(false);
        try
        {
            var f = await s.ReceiveAsync(ct).ConfigureAwait(false);
            if (f.Type != FrameType.Result) throw Unexpected(f, "Result");
            var stat = AgentJson.Decode(f.Payload, AgentJson.Default.FileStat);
            while (true)
            {
                f = await s.ReceiveAsync(ct).ConfigureAwait(false);
                if (f.Type == FrameType.Eof) return stat;
                if (f.Type != FrameType.Data) throw Unexpected(f, "Data");
                await destination.WriteAsync(f.Payload, ct).ConfigureAwait(false);
                await s.SendAsync(FrameType.Window, StreamId.File, Wire.U32((uint)f.Payload.Length),
                    ct).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is not (AgentUnavailableException or AgentOperationException))
        {
            // The destination failed or the caller gave up: the agent stops reading.
            await s.TrySendAsync(FrameType.Cancel, 0, []).ConfigureAwait(false);
            throw;
        }
    }

    public Task<FileStat> StatAsync(string path, CancellationToken ct = default) =>
        RequestAsync(FrameType.Stat, AgentJson.Encode(new PathRequest { Path = path }, AgentJson.Default.PathRequest),
            ct);

    public Task<FileStat> MkdirAsync(MkdirRequest request, CancellationToken ct = default) =>
        RequestAsync(FrameType.Mkdir, AgentJson.Encode(request, AgentJson.Default.MkdirRequest), ct);

    /// <summary>
    /// Lists a directory: one <see cref="FileStat"/> per entry (symlinks are not followed; "." and ".." are left
    /// out), in the order the guest's file system returns them. A path that is not a directory is an error (ENOTDIR).
    /// </summary>
    public async Task<IReadOnlyList<FileStat>> ListAsync(string path, CancellationToken ct = default)
    {
        await using var s = Open();
        await s.SendAsync(FrameType.List, 0, AgentJson.Encode(new PathRequest { Path = path },
            AgentJson.Default.PathRequest), ct).ConfigureAwait(false);
        var all = new List<FileStat>();
        while (true)
        {
            var f = await s.ReceiveAsync(ct).ConfigureAwait(false);
            if (f.Type != FrameType.Result) throw Unexpected(f, "Result");
            var part = AgentJson.Decode(f.Payload, AgentJson.Default.DirectoryListing);
            all.AddRange(part.Entries);
            if (!part.More) return all;
        }
    }

    public async Task RemoveAsync(string path, bool recursive = false, CancellationToken ct = default) =>
        await RequestRawAsync(FrameType.Remove,
            AgentJson.Encode(new RemoveRequest { Path = path, Recursive = recursive }, AgentJson.Default.RemoveRequest),
            ct).ConfigureAwait(false);

    /// <summary>Asks the guest to power off or reboot. The agent answers first, then syncs the disks and
    /// acts.</summary>
    public async Task PowerAsync(string action, CancellationToken ct = default)
    {
        if (action is not ("poweroff" or "reboot")) throw new ArgumentException(
            $"unknown power action '{action}': use poweroff or reboot", nameof(action));
        await RequestRawAsync(FrameType.Power, AgentJson.Encode(new PowerRequest { Action = action },
            AgentJson.Default.PowerRequest), ct).ConfigureAwait(false);
    }

    async Task<FileStat> RequestAsync(FrameType type, byte[] payload, CancellationToken ct)
    {
        var f = await RequestRawAsync(type, payload, ct).ConfigureAwait(false);
        return AgentJson.Decode(f.Payload, AgentJson.Default.FileStat);
    }

    async Task<Frame> RequestRawAsync(FrameType type, byte[] payload, CancellationToken ct)
    {
        await using var s = Open();
        await s.SendAsync(type, 0, payload, ct).ConfigureAwait(false);
        var f = await s.ReceiveAsync(ct).ConfigureAwait(false);
        if (f.Type != FrameType.Result) throw Unexpected(f, "Result");
        return f;
    }

    static AgentProtocolException Unexpected(Frame f, string wanted) =>
        new($"the agent sent {f.Type} where {wanted} was expected");

    // ---- sessions and the connection ----

    Session Open()
    {
        ThrowIfFailed();
        if (!_ready.Task.IsCompletedSuccessfully) throw new InvalidOperationException(
            "the agent connection is not ready: call WaitReadyAsync first");
        var id = (uint)Interlocked.Increment(ref _nextSession);
        var s = new Session(this, id);
        _sessions[id] = s;
        return s;
    }

    void ThrowIfFailed()
    {
        if (_failure is { } f) throw new AgentUnavailableException(f.Message, f);
    }

    Exception Fail(Exception e)
    {
        _failure ??= e;
        foreach (var s in _sessions.Values) s.Fail(_failure);
        _ready.TrySetException(_failure);
        return e;
    }

    async Task ReadLoopAsync()
    {
        try
        {
            while (true)
            {
                var (outcome, f) = await _reader.ReadAsync(_cts.Token).ConfigureAwait(false);
                if (outcome == ReadOutcome.EndOfStream)
                {
                    Fail(new AgentUnavailableException("the connection to the Hull agent was closed"));
                    return;
                }
                if (outcome == ReadOutcome.Synced) continue;
                if (f.Session == 0)
                {
                    if (f.Type != FrameType.Ready) continue;
                    ReadyMessage ready;
                    try { ready = AgentJson.Decode(f.Payload, AgentJson.Default.ReadyMessage); }
                    catch (AgentProtocolException) { continue; }
                    if (ready.Nonce == _nonce)
                    {
                        Guest = ready.Guest;
                        if (!_ready.Task.IsCompleted) EndedSessions = ready.EndedSessions;
                        _ready.TrySetResult(ready);
                    }
                    else if (ready.Nonce == 0 && _ready.Task.IsCompleted)
                    {
                        // The agent (re)started under us: whatever it was doing for us is gone.
                        Guest = ready.Guest;
                        var gone = new AgentUnavailableException("the Hull agent restarted; the operation was lost");
                        foreach (var s in _sessions.Values) s.Fail(gone);
                    }
                    continue;
                }
                if (_sessions.TryGetValue(f.Session, out var session)) session.Deliver(f);
            }
        }
        catch (OperationCanceledException) when (_cts.IsCancellationRequested)
        {
            Fail(new ObjectDisposedException(nameof(AgentClient), "the agent client was disposed"));
        }
        catch (Exception e)
        {
            Fail(new AgentUnavailableException($"the connection to the Hull agent failed: {e.Message}", e));
        }
    }

    async Task WriteRawAsync(byte[] bytes, CancellationToken ct)
    {
        await _writeLock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            await _stream.WriteAsync(bytes, ct).ConfigureAwait(false);
            await _stream.FlushAsync(ct).ConfigureAwait(false);
        }
        finally { _writeLock.Release(); }
    }

    internal async Task SendAsync(FrameType type, byte stream, uint session, byte[] payload, CancellationToken ct)
    {
        ThrowIfFailed();
        try
        {
            await WriteRawAsync(Wire.Encode(type, stream, session, payload), ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or SocketException)
        {
            throw Fail(new AgentUnavailableException($"the connection to the Hull agent failed: {e.Message}", e));
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_cts.IsCancellationRequested) return;
        _cts.Cancel();
        await _stream.DisposeAsync().ConfigureAwait(false);
        if (_readLoop is not null)
            try { await _readLoop.ConfigureAwait(false); } catch { }
        Fail(new ObjectDisposedException(nameof(AgentClient), "the agent client was disposed"));
        _cts.Dispose();
    }

    /// <summary>One multiplexed operation: its inbox of frames and its send credit.</summary>
    sealed class Session(AgentClient client, uint id) : IAsyncDisposable
    {
        readonly Channel<Frame> _inbox = Channel.CreateUnbounded<Frame>(
            new UnboundedChannelOptions { SingleReader = true });
        readonly CancellationTokenSource _failed = new();
        public uint Id => id;
        /// <summary>Cancelled when the session fails (the agent sent an error, or the connection is gone).</summary>
        public CancellationToken Failed => _failed.Token;
        /// <summary>Credit for the stream this side sends (stdin or pushed file).</summary>
        public Credit Credit { get; } = new();

        public void Deliver(Frame f)
        {
            if (f.Type == FrameType.Window)
            {
                if (f.Payload.Length == 4) Credit.Add(BinaryPrimitives.ReadUInt32LittleEndian(f.Payload));
                return;
            }
            if (f.Type is FrameType.Error or FrameType.ExecExit) Credit.Close();
            _inbox.Writer.TryWrite(f);
            if (f.Type == FrameType.Error) CancelFailed();
        }

        public void Fail(Exception e)
        {
            Credit.Close();
            _inbox.Writer.TryComplete(e);
            CancelFailed();
        }

        void CancelFailed()
        {
            try { _failed.Cancel(); } catch (ObjectDisposedException) { }
        }

        public Task SendAsync(FrameType type, byte stream, byte[] payload, CancellationToken ct) =>
            client.SendAsync(type, stream, id, payload, ct);

        public async Task TrySendAsync(FrameType type, byte stream, byte[] payload)
        {
            try { await client.SendAsync(type, stream, id, payload, CancellationToken.None).ConfigureAwait(false); }
            catch (AgentUnavailableException) { }
        }

        /// <summary>The next frame; an Error frame becomes an <see cref="AgentOperationException"/>.</summary>
        public async Task<Frame> ReceiveAsync(CancellationToken ct)
        {
            Frame f;
            try { f = await _inbox.Reader.ReadAsync(ct).ConfigureAwait(false); }
            catch (ChannelClosedException e) when (e.InnerException is not null)
            {
                throw e.InnerException is AgentUnavailableException u ? new AgentUnavailableException(u.Message, u)
                    : new AgentUnavailableException(e.InnerException.Message, e.InnerException);
            }
            if (f.Type == FrameType.Error)
            {
                var m = AgentJson.Decode(f.Payload, AgentJson.Default.ErrorMessage);
                throw new AgentOperationException(m.Message, m.Errno, m.ErrnoName);
            }
            return f;
        }

        public ValueTask DisposeAsync()
        {
            client._sessions.TryRemove(id, out _);
            Credit.Close();
            return ValueTask.CompletedTask;
        }
    }

    /// <summary>An exec in flight: the output pump (frames to the caller's streams) and the stdin pump.</summary>
    sealed class ExecProcess(Session s, Stream? stdin, Stream stdout, Stream stderr) : IExecProcess
    {
        readonly TaskCompletionSource<int> _started = new(TaskCreationOptions.RunContinuationsAsynchronously);
        readonly CancellationTokenSource _stdinCts = new();
        Task<ExecResult>? _completion;

        public int Pid { get; private set; }

        public async Task StartAsync(CancellationToken ct)
        {
            _completion = Task.Run(PumpOutputAsync);
            Pid = await _started.Task.WaitAsync(ct).ConfigureAwait(false);
            if (stdin is not null) _ = Task.Run(PumpStdinAsync);
        }

        async Task<ExecResult> PumpOutputAsync()
        {
            try
            {
                while (true)
                {
                    var f = await s.ReceiveAsync(CancellationToken.None).ConfigureAwait(false);
                    switch (f.Type)
                    {
                        case FrameType.ExecStarted:
                            _started.TrySetResult(AgentJson.Decode(f.Payload,
                                AgentJson.Default.ExecStartedMessage).Pid);
                            break;
                        case FrameType.Data:
                            await (f.Stream == StreamId.Stderr ? stderr : stdout).WriteAsync(f.Payload).ConfigureAwait(
                                false);
                            await s.SendAsync(FrameType.Window, f.Stream, Wire.U32((uint)f.Payload.Length),
                                CancellationToken.None).ConfigureAwait(false);
                            break;
                        case FrameType.Eof:
                            await (f.Stream == StreamId.Stderr ? stderr : stdout).FlushAsync().ConfigureAwait(false);
                            break;
                        case FrameType.ExecExit:
                            return AgentJson.Decode(f.Payload, AgentJson.Default.ExecResult);
                        default:
                            throw Unexpected(f, "exec output");
                    }
                }
            }
            catch (Exception e)
            {
                _started.TrySetException(e);
                throw;
            }
            finally
            {
                _stdinCts.Cancel();
                await s.DisposeAsync().ConfigureAwait(false);
            }
        }

        async Task PumpStdinAsync()
        {
            var buf = new byte[Wire.ChunkSize];
            var ct = _stdinCts.Token;
            try
            {
                while (true)
                {
                    var n = await s.Credit.TakeAsync(buf.Length, ct).ConfigureAwait(false);
                    if (n == 0) return;
                    var r = await stdin!.ReadAsync(buf.AsMemory(0, n), ct).ConfigureAwait(false);
                    if (r < n) s.Credit.Add(n - r);
                    if (r == 0) break;
                    await s.SendAsync(FrameType.Data, StreamId.Stdin, buf.AsSpan(0, r).ToArray(),
                        ct).ConfigureAwait(false);
                }
                await s.SendAsync(FrameType.Eof, StreamId.Stdin, [], ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException) { }
            catch (AgentUnavailableException) { }
            catch (IOException)
            {
                await s.TrySendAsync(FrameType.Eof, StreamId.Stdin, []).ConfigureAwait(false);
            }
        }

        public Task ResizeAsync(ushort rows, ushort cols, CancellationToken ct = default)
        {
            var b = new byte[4];
            BinaryPrimitives.WriteUInt16LittleEndian(b, rows);
            BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(2), cols);
            return s.SendAsync(FrameType.Resize, 0, b, ct);
        }

        public Task SignalAsync(int signal, CancellationToken ct = default)
        {
            if (signal is < 1 or > 64) throw new ArgumentOutOfRangeException(nameof(signal),
                $"signal {signal} is not between 1 and 64");
            var b = new byte[4];
            BinaryPrimitives.WriteInt32LittleEndian(b, signal);
            return s.SendAsync(FrameType.Signal, 0, b, ct);
        }

        public Task<ExecResult> WaitAsync(CancellationToken ct = default) => _completion!.WaitAsync(ct);

        public async ValueTask DisposeAsync()
        {
            _stdinCts.Cancel();
            if (_completion is { IsCompleted: false })
            {
                // Abandoned while running: kill it, so nothing keeps running in the guest.
                try { await SignalAsync(9).ConfigureAwait(false); } catch (AgentUnavailableException) { }
                try { await _completion.ConfigureAwait(false); } catch { }
            }
        }
    }
}
