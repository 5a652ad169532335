using System.Collections.Concurrent;
using System.Threading.Channels;
using Hull.Api;
using Hull.Instances;

namespace Hull.Daemon;

/// <summary>Fans events out to every subscriber of /1.0/events. A slow subscriber loses its oldest events, never blocks
/// hulld.</summary>
public sealed class EventHub : IDriverLogSink
{
    readonly ConcurrentDictionary<long, (Channel<Event> Channel, HashSet<string>? Types)> _subs = new();
    long _next;

    public (long Id, ChannelReader<Event> Reader) Subscribe(HashSet<string>? types)
    {
        var ch = Channel.CreateBounded<Event>(new BoundedChannelOptions(4096) { FullMode =
            BoundedChannelFullMode.DropOldest, SingleReader = true });
        var id = Interlocked.Increment(ref _next);
        _subs[id] = (ch, types);
        return (id, ch.Reader);
    }

    public void Unsubscribe(long id)
    {
        if (_subs.TryRemove(id, out var s)) s.Channel.Writer.TryComplete();
    }

    public void Publish(Event e)
    {
        foreach (var (_, s) in _subs)
            if (s.Types is null || s.Types.Contains(e.Type)) s.Channel.Writer.TryWrite(e);
    }

    public void Lifecycle(string action, string instance) =>
        Publish(new Event { Type = "lifecycle", Timestamp = DateTimeOffset.UtcNow, Action = action,
            Instance = instance });

    public void Log(string level, string message, string? instance = null) =>
        Publish(new Event { Type = "logging", Timestamp = DateTimeOffset.UtcNow, Level = level, Message = message,
            Instance = instance });

    /// <summary>A driver's line: a "logging" event, and in hulld's stderr (its log) as before.</summary>
    void IDriverLogSink.Log(string level, string message, string? instance)
    {
        Console.Error.WriteLine(level == "info" ? $"hulld: {message}" : $"hulld: {level}: {message}");
        Log(level, message, instance);
    }
}

/// <summary>What a running operation can do: report progress, see cancellation.</summary>
public sealed class OperationContext(Operations ops, Operation op, CancellationToken ct)
{
    public CancellationToken Token { get; } = ct;
    public void Progress(string text) => ops.SetProgress(op, text);
    public void Result(string key, string value) => ops.SetResult(op, key, value);
}

/// <summary>Long-running tasks: launch, start, stop, delete, snapshots, image import. Kept in memory (finished ones for
/// an hour).</summary>
public sealed class Operations(EventHub events)
{
    sealed class Entry
    {
        public required Operation Op;
        public required CancellationTokenSource Cts;
        public readonly TaskCompletionSource Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    readonly ConcurrentDictionary<string, Entry> _ops = new();
    readonly Lock _lock = new();
    public long Started, Failed;

    public Operation Start(string description, IEnumerable<string> resources, bool mayCancel, Func<OperationContext,
        Task> work)
    {
        Prune();
        var now = DateTimeOffset.UtcNow;
        var op = new Operation
        {
            Id = Guid.NewGuid().ToString("N")[..16], Description = description, Status = OperationStatus.Running,
            CreatedAt = now, UpdatedAt = now, Resources = resources.ToList(), MayCancel = mayCancel,
        };
        var e = new Entry { Op = op, Cts = new CancellationTokenSource() };
        _ops[op.Id] = e;
        Interlocked.Increment(ref Started);
        Publish(op);
        _ = Task.Run(async () =>
        {
            string status; string? error = null; int? code = null;
            try
            {
                await work(new OperationContext(this, op, e.Cts.Token));
                status = OperationStatus.Success;
            }
            catch (OperationCanceledException) when (e.Cts.IsCancellationRequested)
            {
                status = OperationStatus.Cancelled; error = "cancelled"; code = 499;
            }
            catch (Exception ex)
            {
                status = OperationStatus.Failure; (code, error) = ApiErrors.Describe(ex);
                Interlocked.Increment(ref Failed);
            }
            lock (_lock)
            {
                op.Status = status; op.Error = error; op.ErrorCode = code; op.MayCancel = false; op.Progress = null;
                op.UpdatedAt = DateTimeOffset.UtcNow;
            }
            Publish(op);
            e.Done.TrySetResult();
        });
        return Snapshot(op);
    }

    public void SetProgress(Operation op, string text)
    {
        lock (_lock) { op.Progress = text; op.UpdatedAt = DateTimeOffset.UtcNow; }
        Publish(op);
    }

    public void SetResult(Operation op, string key, string value)
    {
        lock (_lock) (op.Metadata ??= [])[key] = value;
    }

    void Publish(Operation op) =>
        events.Publish(new Event { Type = "operation", Timestamp = DateTimeOffset.UtcNow, Operation = Snapshot(op) });

    Operation Snapshot(Operation op)
    {
        lock (_lock)
            return new Operation
            {
                Id = op.Id, Description = op.Description, Status = op.Status, CreatedAt = op.CreatedAt,
                UpdatedAt = op.UpdatedAt,
                Resources = [.. op.Resources], MayCancel = op.MayCancel, Progress = op.Progress, Error = op.Error,
                ErrorCode = op.ErrorCode,
                Metadata = op.Metadata is null ? null : new Dictionary<string, string>(op.Metadata),
            };
    }

    public List<Operation> List() => _ops.Values.Select(e => Snapshot(e.Op)).OrderBy(o => o.CreatedAt).ToList();

    public Operation? Get(string id) => _ops.TryGetValue(id, out var e) ? Snapshot(e.Op) : null;

    /// <summary>Waits until the operation finished or the timeout passed; returns its state either way (null if
    /// unknown).</summary>
    public async Task<Operation?> WaitAsync(string id, TimeSpan timeout, CancellationToken ct)
    {
        if (!_ops.TryGetValue(id, out var e)) return null;
        try { await e.Done.Task.WaitAsync(timeout, ct); } catch (TimeoutException) { }
        return Snapshot(e.Op);
    }

    /// <summary>Cancels a running operation that can be cancelled.</summary>
    public Operation Cancel(string id)
    {
        if (!_ops.TryGetValue(id, out var e)) throw new Hull.Instances.InstanceException(
            $"operation {id} not found: 'hull operation list' shows the known ones", 404);
        if (OperationStatus.IsFinal(e.Op.Status)) throw new Hull.Instances.InstanceException(
            $"operation {id} already ended ({e.Op.Status})", 409);
        if (!e.Op.MayCancel) throw new Hull.Instances.InstanceException(
            $"operation {id} ({e.Op.Description}) cannot be cancelled: wait for it to end", 409);
        e.Cts.Cancel();
        return Snapshot(e.Op);
    }

    public int RunningCount => _ops.Values.Count(e => !OperationStatus.IsFinal(e.Op.Status));

    long _nextPrune;

    /// <summary>Drops operations that ended over an hour ago. A walk over every kept operation: at most once a minute,
    /// not at every start (10,000 launches keep 10,000 operations for the hour).</summary>
    void Prune()
    {
        var now = Environment.TickCount64;
        var next = Interlocked.Read(ref _nextPrune);
        if (now < next || Interlocked.CompareExchange(ref _nextPrune, now + 60_000, next) != next) return;
        var cutoff = DateTimeOffset.UtcNow.AddHours(-1);
        foreach (var (id, e) in _ops)
            if (OperationStatus.IsFinal(e.Op.Status) && e.Op.UpdatedAt < cutoff
                && _ops.TryRemove(id, out var gone)) gone.Cts.Dispose();
    }
}
