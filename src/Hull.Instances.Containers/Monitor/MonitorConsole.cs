using Hull.Containers;
using Hull.Linux;

namespace Hull.Instances.Containers;

/// <summary>
/// A system container's /dev/console, held by the monitor (which outlives hulld). The container's init allocated the
/// pty in the container's own devpts, bind-mounted its slave on /dev/console, made it its stdio and sent the master
/// here. One thread drains the master for as long as the container has the console open (a pty nobody reads would
/// stall every write to it): each byte goes to the instance's console.log (hull logs) and to every attached client
/// (hull console, through hulld); a client's input is written to the master, where getty and login read it. A client
/// that does not take the output as fast as it comes is detached rather than let it stall the console.
/// The monitor holds a slave of its own until the init has ended (as LXC does): systemd opens /dev/console for each
/// message and closes it, and a pty whose every slave is closed ends (its master reads EIO, its slave node is gone).
/// </summary>
sealed class MonitorConsole
{
    /// <summary>The most of the current line (a prompt waits on it) a client gets when it attaches.</summary>
    const int MaxLine = 4096;

    readonly string _id;
    readonly SafeFd _master, _log, _peer;
    readonly object _gate = new();
    readonly List<SafeFd> _clients = [];
    readonly ManualResetEventSlim _ended = new();
    byte[] _line = [];

    /// <param name="master">The pty master (owned from now on).</param>
    /// <param name="log">console.log, open for appending (owned from now on).</param>
    public MonitorConsole(string id, SafeFd master, SafeFd log)
    {
        _id = id;
        _master = master;
        _log = log;
        var peer = Libc.ioctl(master.Fd, 0x5441 /* TIOCGPTPEER */, O.RDWR | O.NOCTTY | O.CLOEXEC);
        if (peer < 0)
        {
            var e = LinuxException.FromLastError("TIOCGPTPEER on the console's pty master");
            master.Dispose(); log.Dispose();
            throw e;
        }
        _peer = new SafeFd(peer);
        new Thread(Pump) { IsBackground = true, Name = "hull-monitor-console" }.Start();
    }

    /// <summary>Once the init has ended: lets the console end (closes the monitor's slave) and waits until its last
    /// output is in console.log; false if that takes longer than <paramref name="timeout"/> (a process outside the
    /// container holds the slave).</summary>
    public bool End(TimeSpan timeout)
    {
        _peer.Dispose();
        return _ended.Wait(timeout);
    }

    /// <summary>A new client: a socket whose reads give the console's output from now on (the line being written
    /// first, so a waiting prompt shows) and whose writes are the console's input. The caller owns it.</summary>
    public SafeFd Attach()
    {
        var (mine, theirs) = Sys.SocketPair();
        lock (_gate)
        {
            if (_ended.IsSet)
            {
                mine.Dispose(); theirs.Dispose();
                throw new ContainerException($"the console of container '{_id}' has closed (its init has ended)");
            }
            if (_line.Length > 0) MonitorInterop.SendNow(mine, _line);
            _clients.Add(mine);
        }
        new Thread(() => Input(mine)) { IsBackground = true, Name = "hull-monitor-console-in" }.Start();
        return theirs;
    }

    void Pump()
    {
        var buf = new byte[16384];
        var logFailed = false;
        try
        {
            while (true)
            {
                int n;
                // EIO once no process has the slave open: the container has ended.
                try { n = Sys.Read(_master, buf); }
                catch (LinuxException) { break; }
                if (n == 0) break;
                var data = buf.AsSpan(0, n);
                try { Sys.WriteAll(_log, data, "write console.log"); }
                catch (LinuxException e) when (!logFailed)
                {
                    logFailed = true;
                    ContainerMonitor.Log($"{_id}: the console's output is not logged from now on: {e.Message}");
                }
                catch (LinuxException) { }
                lock (_gate)
                {
                    Remember(data);
                    foreach (var c in _clients)
                        if (!SendAll(c, data)) MonitorInterop.Shutdown(c); // its input thread drops it
                }
            }
        }
        finally
        {
            lock (_gate)
            {
                foreach (var c in _clients) MonitorInterop.Shutdown(c);
                _ended.Set();
            }
            _master.Dispose();
            _log.Dispose();
        }
    }

    static bool SendAll(SafeFd client, ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
        {
            var n = MonitorInterop.SendNow(client, data);
            if (n <= 0) return false;
            data = data[n..];
        }
        return true;
    }

    /// <summary>Keeps the bytes after the last newline (what a client attaching now has not seen).</summary>
    void Remember(ReadOnlySpan<byte> data)
    {
        var nl = data.LastIndexOf((byte)'\n');
        byte[] line = nl >= 0 ? data[(nl + 1)..].ToArray() : [.. _line, .. data];
        _line = line.Length > MaxLine ? line[^MaxLine..] : line;
    }

    /// <summary>A client's input to the console, until it detaches (or is detached).</summary>
    void Input(SafeFd client)
    {
        var buf = new byte[4096];
        try
        {
            while (true)
            {
                int n;
                try { n = Sys.Read(client, buf); }
                catch (LinuxException) { return; }
                if (n == 0) return;
                var held = false;
                try
                {
                    _master.DangerousAddRef(ref held); // the pump closes it once the container has ended
                    Sys.WriteAll(_master, buf.AsSpan(0, n), "write to the console");
                }
                catch (Exception e) when (e is LinuxException or ObjectDisposedException) { return; }
                finally { if (held) _master.DangerousRelease(); }
            }
        }
        finally
        {
            lock (_gate) _clients.Remove(client);
            client.Dispose();
        }
    }
}
