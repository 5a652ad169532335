using System.Globalization;
using System.Net;

namespace Hull.Linux.Net;

/// <summary>The host's listening sockets (proc(5): /proc/net/tcp, tcp6, udp, udp6) and the processes that hold
/// them.</summary>
public static class HostSockets
{
    /// <summary>A socket bound to <paramref name="port"/> on an address that overlaps <paramref name="address"/>
    /// (0.0.0.0 overlaps every address); its description names the process, if one is found. Null if none.</summary>
    public static string? Listener(string protocol, IPAddress address, int port)
    {
        foreach (var file in new[] { $"/proc/net/{protocol}", $"/proc/net/{protocol}6" })
        {
            string[] lines;
            try { lines = File.ReadAllLines(file); } catch (IOException) { continue; }
            foreach (var line in lines.Skip(1))
            {
                var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (f.Length < 10) continue;
                // tcp: 0A is LISTEN; udp: 07 is an unconnected (bound) socket.
                if (f[3] != (protocol == "tcp" ? "0A" : "07")) continue;
                var local = f[1].Split(':');
                if (int.Parse(local[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture) != port) continue;
                var bound = ParseAddress(local[0]);
                if (bound is not null && !Overlaps(bound, address)) continue;
                var owner = OwnerOf(f[9]);
                return $"{protocol} port {port} is already in use on the host ({bound}:{port}" +
                    (owner is null ? ")" : $", by {owner})");
            }
        }
        return null;
    }

    static bool Overlaps(IPAddress bound, IPAddress wanted)
    {
        if (bound.IsIPv4MappedToIPv6) bound = bound.MapToIPv4();
        return bound.Equals(IPAddress.Any) || bound.Equals(IPAddress.IPv6Any) || wanted.Equals(IPAddress.Any)
            || bound.Equals(wanted);
    }

    /// <summary>/proc/net addresses are hex words in host byte order (little-endian here).</summary>
    static IPAddress? ParseAddress(string hex)
    {
        try
        {
            var b = Convert.FromHexString(hex);
            for (var i = 0; i < b.Length; i += 4) Array.Reverse(b, i, 4);
            return new IPAddress(b);
        }
        catch (FormatException) { return null; }
    }

    /// <summary>"process NAME (pid N)" holding the socket inode, by /proc/PID/fd links.</summary>
    static string? OwnerOf(string inode)
    {
        var target = $"socket:[{inode}]";
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out var pid)) continue;
            try
            {
                foreach (var fd in Directory.EnumerateFileSystemEntries(Path.Combine(dir, "fd")))
                    if (new FileInfo(fd).LinkTarget == target)
                        return $"process {File.ReadAllText(Path.Combine(dir, "comm")).Trim()} (pid {pid})";
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
        return null;
    }
}
