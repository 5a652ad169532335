namespace Hull.Containers;

/// <summary>
/// Resolves a path inside a root directory the way the kernel would if that directory were "/": symlinks are
/// followed but can never lead outside it ("..", absolute targets). Used for every mount destination and device
/// path under a container's rootfs before pivot_root.
/// </summary>
public static class SecurePath
{
    public static string Join(string root, string unsafePath, Func<string, string?>? readLink = null)
    {
        readLink ??= ReadLink;
        root = root.TrimEnd('/');
        var parts = new List<string>();
        var pending = new Stack<string>(Split(unsafePath).Reverse());
        var links = 0;
        while (pending.Count > 0)
        {
            var c = pending.Pop();
            if (c is "" or ".") continue;
            if (c == "..") { if (parts.Count > 0) parts.RemoveAt(parts.Count - 1); continue; }
            var candidate = root + "/" + string.Join('/', parts.Append(c));
            var target = readLink(candidate);
            if (target is null) { parts.Add(c); continue; }
            if (++links > 255) throw new ContainerException($"too many symlinks resolving {unsafePath} in {root}");
            if (target.StartsWith('/')) parts.Clear();
            foreach (var t in Split(target).Reverse()) pending.Push(t);
        }
        return root + "/" + string.Join('/', parts);
    }

    static IEnumerable<string> Split(string p) => p.Split('/', StringSplitOptions.RemoveEmptyEntries);

    static string? ReadLink(string path)
    {
        try
        {
            var fi = new FileInfo(path);
            return fi.Exists || Directory.Exists(path) || fi.LinkTarget is not null ? fi.LinkTarget : null;
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }
}
