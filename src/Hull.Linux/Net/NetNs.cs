namespace Hull.Linux.Net;

/// <summary>Network namespaces (network_namespaces(7)) held by fd, never by a mount in /run/netns.</summary>
public static class NetNs
{
    /// <summary>
    /// A new, empty network namespace (only a down lo), open as an fd: a dedicated thread unshares (the namespace is
    /// the thread's own), opens /proc/thread-self/ns/net and goes back. The namespace lives while the fd is open.
    /// </summary>
    public static SafeFd Create() => OnThread(() =>
    {
        using var home = Sys.Open("/proc/thread-self/ns/net", O.RDONLY);
        Sys.Check(Libc.unshare((int)CLONE.NEWNET), "unshare CLONE_NEWNET");
        try { return Sys.Open("/proc/thread-self/ns/net", O.RDONLY); }
        finally
        {
            if (Libc.setns(home.Fd, (int)CLONE.NEWNET) < 0)
                Environment.FailFast("setns back to hull's own network namespace failed");
        }
    });

    /// <summary>Runs <paramref name="action"/> on a dedicated thread inside the network namespace open as
    /// <paramref name="netns"/> (sockets it makes stay in that namespace).</summary>
    public static T In<T>(SafeFd netns, Func<T> action) => OnThread(() =>
    {
        using var home = Sys.Open("/proc/thread-self/ns/net", O.RDONLY);
        Sys.Check(Libc.setns(netns.Fd, (int)CLONE.NEWNET), "setns into the network namespace");
        try { return action(); }
        finally
        {
            if (Libc.setns(home.Fd, (int)CLONE.NEWNET) < 0)
                Environment.FailFast("setns back to hull's own network namespace failed");
        }
    });

    /// <summary>The network namespace of process <paramref name="pid"/>.</summary>
    public static SafeFd OfProcess(int pid) => Sys.Open($"/proc/{pid}/ns/net", O.RDONLY);

    static T OnThread<T>(Func<T> f)
    {
        T result = default!;
        Exception? error = null;
        var t = new Thread(() =>
        {
            try { result = f(); }
            catch (Exception e) { error = e; }
        }) { IsBackground = true, Name = "hull-netns" };
        t.Start();
        t.Join();
        if (error is not null) throw error;
        return result;
    }
}
