using System.Globalization;
using System.Text;
using Hull.Linux;

namespace Hull.Instances.Containers;

/// <summary>
/// Resolves a user as oci.user and exec's --user give it (NAME, UID, NAME:GROUP, UID:GID) against the container's own
/// /etc/passwd and /etc/group, as runc and Podman do: a name must be in passwd; a numeric id that is not runs with
/// group 0 and home /; the user's supplementary groups are the groups of /etc/group that list it. The files are read
/// through a root fd with every path resolved inside it (an image's /etc/passwd may be a symlink to a host file).
/// </summary>
public static class ContainerUsers
{
    public sealed record Resolved(uint Uid, uint Gid, uint[] Groups, string Home);

    /// <summary>Files larger than this are not account databases: refused rather than read.</summary>
    const int MaxFile = 4 << 20;

    public static Resolved Resolve(SafeFd root, string value)
    {
        var (user, group) = AppConfig.ParseUser(value);
        var groups = Entries(Read(root, "etc/group"), 4).ToList();
        string? name = null;
        uint uid, gid = 0;
        var home = "/";
        var numeric = uint.TryParse(user, NumberStyles.None, CultureInfo.InvariantCulture, out _);
        var entry = Entries(Read(root, "etc/passwd"), 7).FirstOrDefault(f => f[0] == user || (numeric && f[2] == user));
        if (entry is not null && uint.TryParse(entry[2], NumberStyles.None, CultureInfo.InvariantCulture, out uid)
            && uint.TryParse(entry[3], NumberStyles.None, CultureInfo.InvariantCulture, out gid))
        {
            name = entry[0];
            home = entry[5].Length > 0 ? entry[5] : "/";
        }
        else if (!uint.TryParse(user, NumberStyles.None, CultureInfo.InvariantCulture, out uid))
            throw new InstanceException($"user '{user}' is not in the container's /etc/passwd: give a user it has, " +
                "or a numeric UID[:GID]");
        if (group is not null)
        {
            if (groups.FirstOrDefault(f => f[0] == group) is { } g
                && uint.TryParse(g[2], NumberStyles.None, CultureInfo.InvariantCulture, out var named)) gid = named;
            else if (!uint.TryParse(group, NumberStyles.None, CultureInfo.InvariantCulture, out gid))
                throw new InstanceException($"group '{group}' is not in the container's /etc/group: give a group " +
                    "it has, or a numeric GID");
        }
        var supplementary = name is null ? [] : groups
            .Where(f => f[3].Split(',').Contains(name, StringComparer.Ordinal))
            .Select(f => uint.TryParse(f[2], NumberStyles.None, CultureInfo.InvariantCulture, out var id) ? id
                : uint.MaxValue)
            .Where(id => id != uint.MaxValue && id != gid).Distinct().ToArray();
        return new Resolved(uid, gid, supplementary, home);
    }

    /// <summary>The lines of a colon-separated account file with at least <paramref name="fields"/> fields (comments
    /// and NIS "+" lines skipped).</summary>
    static IEnumerable<string[]> Entries(string text, int fields) =>
        text.Split('\n').Where(l => l.Length > 0 && l[0] is not ('#' or '+' or '-')).Select(l => l.Split(':'))
            .Where(f => f.Length >= fields);

    /// <summary>An account file of the container ("" if it has none).</summary>
    static string Read(SafeFd root, string path)
    {
        if (!RootedFs.TryOpen(root, path, O.RDONLY, 0, out var fd, out var errno))
            return errno == Errors.ENOENT ? "" : throw new InstanceException(
                $"reading the container's /{path} failed: {Errors.Describe(errno)}");
        using (fd)
        {
            var st = RootedFs.FStat(fd);
            if ((st.Mode & 0xF000) != 0x8000)
                throw new InstanceException($"the container's /{path} is not a regular file");
            if (st.Size > MaxFile)
                throw new InstanceException($"the container's /{path} is larger than {MaxFile >> 20} MiB");
            var buf = new byte[st.Size];
            var n = 0;
            while (n < buf.Length)
            {
                var r = Sys.Read(fd, buf.AsSpan(n));
                if (r <= 0) break;
                n += r;
            }
            return Encoding.UTF8.GetString(buf, 0, n);
        }
    }
}
