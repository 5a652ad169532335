using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Hull.Vm.Qmp;

/// <summary>An error QEMU returned for a command ({"error": {"class": ..., "desc": ...}}).</summary>
public sealed class QmpException(string command, string errorClass, string description)
    : Exception($"QEMU refused '{command}': {description} ({errorClass})")
{
    public string Command { get; } = command;
    public string ErrorClass { get; } = errorClass;
    public string Description { get; } = description;
}

/// <summary>The QMP connection is gone (QEMU exited or closed the socket). The message carries QEMU's last stderr
/// lines.</summary>
public sealed class QemuGoneException(string message) : Exception(message);

/// <summary>An asynchronous QMP event.</summary>
public sealed record QmpEvent(string Name, JsonObject? Data, DateTimeOffset Timestamp);

/// <summary>
/// A QMP client over QEMU's unix socket: greeting and capability negotiation, commands with ids whose replies are
/// matched by id (several may be in flight), events delivered to subscribers, per-command timeouts, and a clear error
/// (with the tail of QEMU's stderr log) when QEMU goes away.
/// </summary>
public sealed class QmpClient : IAsyncDisposable, IDisposable
{
    readonly Socket _socket;
    readonly NetworkStream _stream;
    readonly Func<string>? _diagnostics;
    readonly ConcurrentDictionary<long, (string Command, TaskCompletionSource<JsonNode?> Tcs)> _pending = new();
    readonly SemaphoreSlim _writeLock = new(1, 1);
    readonly List<Action<QmpEvent>> _subscribers = [];
    readonly CancellationTokenSource _cts = new();
    Task? _reader;
    long _nextId;
    volatile string? _closedReason;

    /// <summary>QEMU's version from the greeting, e.g. "7.2.22".</summary>
    public string QemuVersion { get; private set; } = "";
    /// <summary>Completes when the connection closes (QEMU exited or we disposed).</summary>
    public Task Closed => _closedTcs.Task;
    readonly TaskCompletionSource _closedTcs = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public static TimeSpan DefaultTimeout { get; set; } = TimeSpan.FromSeconds(30);

    QmpClient(Socket socket, Func<string>? diagnostics)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: false);
        _diagnostics = diagnostics;
    }

    /// <summary>
    /// Connects to a QMP unix socket, reads the greeting and negotiates capabilities. <paramref name="diagnostics"/>
    /// returns text that explains a failure (typically the tail of QEMU's stderr log).
    /// </summary>
    public static async Task<QmpClient> ConnectAsync(string socketPath, TimeSpan? timeout = null,
        Func<string>? diagnostics = null, CancellationToken ct = default)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        QmpClient? client = null;
        try
        {
            using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
            cts.CancelAfter(timeout ?? DefaultTimeout);
            try { await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath),
                cts.Token).ConfigureAwait(false); }
            catch (SocketException e) { throw new QemuGoneException(
                $"cannot connect to QMP socket {socketPath}: {e.Message}{Tail(diagnostics)}"); }
            client = new QmpClient(socket, diagnostics);
            var reader = new LineReader(client._stream);
            string? greeting;
            // A QEMU that dies right after creating the socket resets the connection (ECONNRESET): it is gone.
            try { greeting = await reader.ReadLineAsync(cts.Token).ConfigureAwait(false); }
            catch (IOException e) { throw new QemuGoneException(
                $"QEMU closed the QMP socket {socketPath} before its greeting ({e.Message}){Tail(diagnostics)}"); }
            if (greeting is null) throw new QemuGoneException(
                $"QEMU closed the QMP socket {socketPath} before its greeting{Tail(diagnostics)}");
            var g = JsonNode.Parse(greeting)?["QMP"]?["version"]?["qemu"];
            if (g is null) throw new QemuGoneException(
                $"{socketPath} is not a QMP socket (greeting: {Trim(greeting)})");
            client.QemuVersion = $"{g["major"]}.{g["minor"]}.{g["micro"]}";
            client._reader = Task.Run(() => client.ReadLoop(reader));
            await client.ExecuteAsync("qmp_capabilities", null, timeout, ct).ConfigureAwait(false);
            return client;
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            client?.Dispose();
            socket.Dispose();
            throw new TimeoutException($"QMP socket {socketPath} did not answer within " +
                $"{(timeout ?? DefaultTimeout).TotalSeconds:0.#} s{Tail(diagnostics)}");
        }
        catch
        {
            client?.Dispose();
            socket.Dispose();
            throw;
        }
    }

    static string Tail(Func<string>? d)
    {
        var t = d?.Invoke();
        return string.IsNullOrWhiteSpace(t) ? "" : $"; QEMU said:\n{t.TrimEnd()}";
    }

    static string Trim(string s) => s.Length > 200 ? s[..200] + "..." : s;

    /// <summary>Registers an event handler; dispose the result to unsubscribe. Handlers run on the reader thread: keep
    /// them short.</summary>
    public IDisposable Subscribe(Action<QmpEvent> handler)
    {
        lock (_subscribers) _subscribers.Add(handler);
        return new Unsubscriber(this, handler);
    }

    sealed class Unsubscriber(QmpClient c, Action<QmpEvent> h) : IDisposable
    {
        public void Dispose() { lock (c._subscribers) c._subscribers.Remove(h); }
    }

    /// <summary>Waits for the first event named <paramref name="name"/> that matches
    /// <paramref name="filter"/>.</summary>
    public async Task<QmpEvent> WaitForEventAsync(string name, Func<QmpEvent, bool>? filter, TimeSpan timeout,
        CancellationToken ct = default)
    {
        var tcs = new TaskCompletionSource<QmpEvent>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var sub = Subscribe(e => { if (e.Name == name && (filter?.Invoke(e) ?? true)) tcs.TrySetResult(e); });
        return await WaitAsync(tcs.Task, timeout, $"QMP event {name}", ct).ConfigureAwait(false);
    }

    /// <summary>An event waiter registered now, awaited later (so an event that comes right after a command is not
    /// missed).</summary>
    public EventWaiter Expect(string name, Func<QmpEvent, bool>? filter = null) => new(this, name, filter);

    public sealed class EventWaiter : IDisposable
    {
        readonly TaskCompletionSource<QmpEvent> _tcs = new(TaskCreationOptions.RunContinuationsAsynchronously);
        readonly IDisposable _sub;
        readonly QmpClient _c;
        readonly string _name;

        internal EventWaiter(QmpClient c, string name, Func<QmpEvent, bool>? filter)
        {
            _c = c; _name = name;
            _sub = c.Subscribe(e => { if (e.Name == name && (filter?.Invoke(e) ?? true)) _tcs.TrySetResult(e); });
        }

        public Task<QmpEvent> Task => _tcs.Task;
        public Task<QmpEvent> WaitAsync(TimeSpan timeout, CancellationToken ct = default) =>
            _c.WaitAsync(_tcs.Task, timeout, $"QMP event {_name}", ct);
        public void Dispose() => _sub.Dispose();
    }

    async Task<T> WaitAsync<T>(Task<T> task, TimeSpan timeout, string what, CancellationToken ct)
    {
        var closed = Closed;
        var delay = Task.Delay(timeout, ct);
        var done = await Task.WhenAny(task, delay, closed).ConfigureAwait(false);
        if (done == task) return await task.ConfigureAwait(false);
        if (task.IsCompleted) return await task.ConfigureAwait(false);
        ct.ThrowIfCancellationRequested();
        if (done == closed) throw Gone();
        throw new TimeoutException($"{what} did not come within {timeout.TotalSeconds:0.#} s");
    }

    /// <summary>Runs a QMP command and returns its "return" value. Throws <see cref="QmpException"/> on an error
    /// reply.</summary>
    public async Task<JsonNode?> ExecuteAsync(string command, JsonObject? arguments = null, TimeSpan? timeout = null,
        CancellationToken ct = default)
    {
        if (_closedReason is not null) throw Gone();
        var id = Interlocked.Increment(ref _nextId);
        var tcs = new TaskCompletionSource<JsonNode?>(TaskCreationOptions.RunContinuationsAsynchronously);
        _pending[id] = (command, tcs);
        try
        {
            var msg = new JsonObject { ["execute"] = command, ["id"] = id };
            if (arguments is not null) msg["arguments"] = arguments.DeepClone();
            var bytes = Encoding.UTF8.GetBytes(msg.ToJsonString() + "\n");
            await _writeLock.WaitAsync(ct).ConfigureAwait(false);
            try { await _stream.WriteAsync(bytes, ct).ConfigureAwait(false); }
            catch (IOException) { throw Gone(); }
            catch (SocketException) { throw Gone(); }
            finally { _writeLock.Release(); }
            var t = timeout ?? DefaultTimeout;
            return await WaitAsync(tcs.Task, t, $"QMP command '{command}'", ct).ConfigureAwait(false);
        }
        finally
        {
            _pending.TryRemove(id, out _);
        }
    }

    /// <summary>Runs a command that returns an object.</summary>
    public async Task<JsonObject> ExecuteObjectAsync(string command, JsonObject? arguments = null,
        TimeSpan? timeout = null, CancellationToken ct = default) =>
        await ExecuteAsync(command, arguments, timeout, ct).ConfigureAwait(false) as JsonObject ?? [];

    Exception Gone() => new QemuGoneException(
        $"QEMU closed the QMP connection ({_closedReason ?? "closed"}){Tail(_diagnostics)}");

    async Task ReadLoop(LineReader reader)
    {
        var reason = "QEMU exited";
        try
        {
            while (true)
            {
                var line = await reader.ReadLineAsync(_cts.Token).ConfigureAwait(false);
                if (line is null) break;
                if (line.Length == 0) continue;
                JsonObject? obj;
                try { obj = JsonNode.Parse(line) as JsonObject; }
                catch (JsonException) { continue; }
                if (obj is null) continue;
                if (obj["event"] is JsonNode ev)
                {
                    var ts = obj["timestamp"];
                    var when = ts is null ? DateTimeOffset.UtcNow
                        : DateTimeOffset.FromUnixTimeMilliseconds((long)ts["seconds"]!.GetValue<long>() * 1000
                            + (ts["microseconds"]?.GetValue<long>() ?? 0) / 1000);
                    var e = new QmpEvent(ev.GetValue<string>(), obj["data"] as JsonObject, when);
                    Action<QmpEvent>[] subs;
                    lock (_subscribers) subs = [.. _subscribers];
                    foreach (var s in subs)
                    {
                        try { s(e); } catch (Exception) { /* a subscriber's bug must not kill the connection */ }
                    }
                    continue;
                }
                if (obj["id"] is JsonNode idNode && idNode.GetValueKind() == JsonValueKind.Number
                    && _pending.TryGetValue(idNode.GetValue<long>(), out var p))
                {
                    if (obj["error"] is JsonObject err)
                        p.Tcs.TrySetException(new QmpException(p.Command,
                            err["class"]?.GetValue<string>() ?? "GenericError",
                            err["desc"]?.GetValue<string>() ?? "unknown error"));
                    else
                        p.Tcs.TrySetResult(obj["return"]?.DeepClone());
                }
            }
        }
        catch (OperationCanceledException) { reason = "disconnected"; }
        catch (IOException e) { reason = e.Message; }
        catch (SocketException e) { reason = e.Message; }
        catch (ObjectDisposedException) { reason = "disconnected"; }
        _closedReason = reason;
        foreach (var kv in _pending) kv.Value.Tcs.TrySetException(Gone());
        _closedTcs.TrySetResult();
    }

    public void Dispose()
    {
        _closedReason ??= "disconnected";
        _cts.Cancel();
        try { _socket.Shutdown(SocketShutdown.Both); } catch (SocketException) { } catch (ObjectDisposedException) { }
        _stream.Dispose();
        _socket.Dispose();
        _closedTcs.TrySetResult();
    }

    public async ValueTask DisposeAsync()
    {
        Dispose();
        if (_reader is not null) { try { await _reader.ConfigureAwait(false); } catch (Exception) { } }
    }

    /// <summary>Reads \n-terminated UTF-8 lines without a StreamReader's buffering surprises.</summary>
    sealed class LineReader(Stream s)
    {
        readonly byte[] _buf = new byte[65536];
        int _start, _end;
        readonly MemoryStream _acc = new();

        public async Task<string?> ReadLineAsync(CancellationToken ct)
        {
            while (true)
            {
                var nl = Array.IndexOf(_buf, (byte)'\n', _start, _end - _start);
                if (nl >= 0)
                {
                    _acc.Write(_buf, _start, nl - _start);
                    _start = nl + 1;
                    var line = Encoding.UTF8.GetString(_acc.GetBuffer(), 0, (int)_acc.Length).TrimEnd('\r');
                    _acc.SetLength(0);
                    return line;
                }
                _acc.Write(_buf, _start, _end - _start);
                _start = _end = 0;
                var n = await s.ReadAsync(_buf, ct).ConfigureAwait(false);
                if (n == 0) return null;
                _end = n;
            }
        }
    }
}
