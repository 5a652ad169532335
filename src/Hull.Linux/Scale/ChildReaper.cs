using System.Collections.Concurrent;
using System.Runtime.InteropServices;

namespace Hull.Linux.Scale;

/// <summary>
/// Waits for many children of this process with one thread: each child gets a pidfd in one epoll set, and the thread
/// reaps (waitpid) a child once its pidfd says it exited. A thread blocked in waitpid per child costs a thread per
/// running container (its stack, the runtime's per-thread state, a pid): this costs one fd.
/// </summary>
public sealed unsafe partial class ChildReaper
{
    const int EPOLL_CLOEXEC = 0x80000, EPOLL_CTL_ADD = 1, EPOLL_CTL_DEL = 2;
    const uint EPOLLIN = 0x1;

    [StructLayout(LayoutKind.Sequential, Pack = 4)]
    struct EpollEvent { public uint Events; public ulong Data; }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int epoll_create1(int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int epoll_ctl(int epfd, int op, int fd, EpollEvent* ev);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int epoll_wait(int epfd, EpollEvent* events, int maxEvents, int timeout);

    sealed record Waiter(int Pid, SafeFd Pidfd, bool Reap, TaskCompletionSource<int> Done);

    /// <summary>The process-wide reaper (its thread starts with the first child it is given).</summary>
    public static ChildReaper Shared => s_shared.Value;
    static readonly Lazy<ChildReaper> s_shared = new(() => new ChildReaper());

    readonly SafeFd _epoll;
    readonly ConcurrentDictionary<int, Waiter> _waiters = new();

    ChildReaper()
    {
        var fd = epoll_create1(EPOLL_CLOEXEC);
        if (fd < 0) throw LinuxException.FromLastError("epoll_create1");
        _epoll = new SafeFd(fd);
        new Thread(Loop) { IsBackground = true, Name = "hull child reaper" }.Start();
    }

    /// <summary>Children being waited for.</summary>
    public int Count => _waiters.Count;

    /// <summary>The raw wait status of <paramref name="pid"/> (a child of this process) once it exits. Fails with a
    /// <see cref="LinuxException"/> at once if there is no such process, or when it exits if it was not a child (or
    /// someone else reaped it first).</summary>
    public Task<int> WaitAsync(int pid)
    {
        SafeFd pidfd;
        try { pidfd = Sys.PidfdOpen(pid); }
        catch (LinuxException e) { return Task.FromException<int>(e); }
        return Add(new Waiter(pid, pidfd, true, new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously)), default);
    }

    /// <summary>Completes when the process behind <paramref name="pidfd"/> (any process, not only a child) has exited;
    /// nothing is reaped. Takes ownership of the pidfd (closed when done or cancelled).</summary>
    public Task ExitedAsync(SafeFd pidfd, CancellationToken ct) =>
        Add(new Waiter(0, pidfd, false, new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously)), ct);

    Task<int> Add(Waiter w, CancellationToken ct)
    {
        var fd = w.Pidfd.Fd;
        _waiters[fd] = w;
        var ev = new EpollEvent { Events = EPOLLIN, Data = (ulong)fd };
        if (epoll_ctl(_epoll.Fd, EPOLL_CTL_ADD, fd, &ev) < 0)
        {
            var e = LinuxException.FromLastError(w.Reap ? $"epoll_ctl add pidfd of {w.Pid}" : "epoll_ctl add pidfd");
            _waiters.TryRemove(fd, out _);
            w.Pidfd.Dispose();
            return Task.FromException<int>(e);
        }
        if (ct.CanBeCanceled)
        {
            var reg = ct.Register(() =>
            {
                if (!_waiters.TryRemove(new KeyValuePair<int, Waiter>(fd, w))) return; // done already
                epoll_ctl(_epoll.Fd, EPOLL_CTL_DEL, fd, null);
                w.Pidfd.Dispose();
                w.Done.TrySetCanceled(ct);
            });
            w.Done.Task.ContinueWith(_ => reg.Dispose(), TaskScheduler.Default);
        }
        return w.Done.Task;
    }

    void Loop()
    {
        const int Max = 64;
        var events = stackalloc EpollEvent[Max];
        while (true)
        {
            var n = epoll_wait(_epoll.Fd, events, Max, -1);
            if (n < 0)
            {
                if (Marshal.GetLastPInvokeError() == Errors.EINTR) continue;
                Fail(LinuxException.FromLastError("epoll_wait"));
                return;
            }
            for (var i = 0; i < n; i++)
            {
                if (!_waiters.TryRemove((int)events[i].Data, out var w)) continue;
                epoll_ctl(_epoll.Fd, EPOLL_CTL_DEL, w.Pidfd.Fd, null);
                w.Pidfd.Dispose();
                if (!w.Reap) { w.Done.TrySetResult(0); continue; }
                try { w.Done.TrySetResult(Sys.WaitPid(w.Pid)); }
                catch (LinuxException e) { w.Done.TrySetException(e); }
            }
        }
    }

    void Fail(Exception e)
    {
        foreach (var fd in _waiters.Keys)
            if (_waiters.TryRemove(fd, out var w)) { w.Pidfd.Dispose(); w.Done.TrySetException(e); }
    }
}
