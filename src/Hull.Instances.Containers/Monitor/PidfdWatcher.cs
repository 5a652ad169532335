using Hull.Linux;

namespace Hull.Instances.Containers;

/// <summary>
/// Watches many processes with one thread: each pidfd is registered with one epoll instance and its callback runs on
/// the watcher thread once the process has exited (the pidfd became readable). The cost per process is one pidfd and
/// one epoll entry in the kernel and a dictionary entry here, not a thread.
/// Callbacks must be short and must not block; they run one at a time.
/// </summary>
public sealed class PidfdWatcher : IDisposable
{
    readonly SafeFd _epoll = MonitorInterop.EpollCreate();
    readonly Dictionary<ulong, (SafeFd Pidfd, Action Ready)> _watched = [];
    readonly object _gate = new();
    readonly Thread _thread;
    ulong _next;
    volatile bool _disposed;

    public PidfdWatcher(string name)
    {
        _thread = new Thread(Loop) { IsBackground = true, Name = name };
        _thread.Start();
    }

    public int Count { get { lock (_gate) return _watched.Count; } }

    /// <summary>Calls <paramref name="ready"/> once the process behind <paramref name="pidfd"/> has exited (at once if
    /// it
    /// already has). The watcher owns the pidfd from now on. Returns a key for <see cref="Unregister"/>.</summary>
    public ulong Register(SafeFd pidfd, Action ready)
    {
        lock (_gate)
        {
            var key = ++_next;
            _watched[key] = (pidfd, ready);
            try { MonitorInterop.EpollAdd(_epoll, pidfd, key); }
            catch { _watched.Remove(key); pidfd.Dispose(); throw; }
            return key;
        }
    }

    /// <summary>Stops watching; false if the callback has run (or is running) already.</summary>
    public bool Unregister(ulong key)
    {
        lock (_gate)
        {
            if (!_watched.Remove(key, out var w)) return false;
            MonitorInterop.EpollRemove(_epoll, w.Pidfd);
            w.Pidfd.Dispose();
            return true;
        }
    }

    void Loop()
    {
        Span<ulong> keys = stackalloc ulong[64];
        while (!_disposed)
        {
            int n;
            try { n = MonitorInterop.EpollWait(_epoll, keys, 1000); }
            catch (LinuxException) when (_disposed) { return; }
            for (var i = 0; i < n; i++)
            {
                (SafeFd Pidfd, Action Ready) w;
                lock (_gate)
                {
                    if (!_watched.Remove(keys[i], out w)) continue;
                    MonitorInterop.EpollRemove(_epoll, w.Pidfd);
                }
                try { w.Ready(); }
                catch (Exception e) { Console.Error.WriteLine($"{_thread.Name}: warning: {e.Message}"); }
                finally { w.Pidfd.Dispose(); }
            }
        }
    }

    public void Dispose()
    {
        _disposed = true;
        _thread.Join();
        lock (_gate)
        {
            foreach (var w in _watched.Values) w.Pidfd.Dispose();
            _watched.Clear();
        }
        _epoll.Dispose();
    }
}
