namespace Hull.Linux;

/// <summary>
/// The seam between the engines and the kernel for the steps that set up a container's filesystem and identity.
/// <see cref="LinuxSyscalls"/> makes the calls; <see cref="RecordingSyscalls"/> records them so the steps can be
/// unit-tested without root. Paths are absolute in the calling process's view.
/// </summary>
public interface ISyscalls
{
    void Mount(string? source, string target, string? fstype, ulong flags, string? data);
    /// <summary>Attaches the detached mount open as fd <paramref name="tree"/> at <paramref name="target"/>.</summary>
    void AttachMount(int tree, string target);
    void Umount(string target, int flags);
    void PivotRoot(string newRoot, string putOld);
    void Chroot(string path);
    void Chdir(string path);
    /// <summary>A directory opened O_PATH, to come back to with <see cref="Fchdir"/> when no path reaches it.</summary>
    SafeFd OpenDirectory(string path);
    void Fchdir(SafeFd dir);
    void MkdirAll(string path, uint mode);
    /// <summary>Creates an empty file (and its parents) if nothing is there: a target for a file bind mount.</summary>
    void CreateFile(string path, uint mode);
    void Mknod(string path, uint mode, ulong dev);
    void Symlink(string target, string linkPath);
    void Chown(string path, uint uid, uint gid);
    void Chmod(string path, uint mode);
    void WriteFile(string path, string content);
    void SetHostname(string name);
    void SetDomainname(string name);
    bool Exists(string path);
    bool IsDirectory(string path);
}

/// <summary>The real kernel.</summary>
public sealed class LinuxSyscalls : ISyscalls
{
    public static readonly LinuxSyscalls Instance = new();

    public void Mount(string? source, string target, string? fstype, ulong flags, string? data) =>
        Sys.Mount(source, target, fstype, flags, data);
    public void AttachMount(int tree, string target) => IdmappedMounts.Attach(tree, target);

    public void Umount(string target, int flags) => Sys.Check(Libc.umount2(target, flags), $"umount {target}");
    public void PivotRoot(string newRoot, string putOld) => Sys.PivotRoot(newRoot, putOld);
    public void Chroot(string path) => Sys.Check(Libc.chroot(path), $"chroot {path}");
    public void Chdir(string path) => Sys.Check(Libc.chdir(path), $"chdir {path}");
    public SafeFd OpenDirectory(string path) => Sys.Open(path, O.PATH | O.DIRECTORY);
    public void Fchdir(SafeFd dir) => Sys.Check(Libc.fchdir(dir.Fd), "fchdir");

    public void MkdirAll(string path, uint mode)
    {
        if (Directory.Exists(path)) return;
        var parent = System.IO.Path.GetDirectoryName(path.TrimEnd('/'));
        if (!string.IsNullOrEmpty(parent) && parent != path) MkdirAll(parent, mode);
        if (Libc.mkdir(path, mode) < 0)
        {
            var e = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
            if (e != Errors.EEXIST) throw new LinuxException(e, $"mkdir {path}");
        }
    }

    public void CreateFile(string path, uint mode)
    {
        if (Exists(path)) return;
        var parent = System.IO.Path.GetDirectoryName(path);
        if (!string.IsNullOrEmpty(parent)) MkdirAll(parent, 0b111_101_101);
        using var _ = Sys.Open(path, O.WRONLY | O.CREAT, mode);
    }

    public void Mknod(string path, uint mode, ulong dev) => Sys.Check(Libc.mknod(path, mode, dev), $"mknod {path}");
    public void Symlink(string target, string linkPath) =>
        Sys.Check(Libc.symlink(target, linkPath), $"symlink {linkPath} -> {target}");
    public void Chown(string path, uint uid, uint gid) => Sys.Check(Libc.chown(path, uid, gid), $"chown {path}");
    public void Chmod(string path, uint mode) => Sys.Check(Libc.chmod(path, mode), $"chmod {path}");
    public void WriteFile(string path, string content) => Sys.WriteFile(path, content);
    public void SetHostname(string name) => Sys.Check(
        Libc.sethostname(name, System.Text.Encoding.UTF8.GetByteCount(name)), $"sethostname {name}");
    public void SetDomainname(string name) =>
        Sys.Check(Libc.setdomainname(name, System.Text.Encoding.UTF8.GetByteCount(name)), $"setdomainname {name}");
    public bool Exists(string path) => Libc.access(path, 0) == 0 || IsDanglingLink(path);
    public bool IsDirectory(string path) => Directory.Exists(path);

    static bool IsDanglingLink(string path)
    {
        try { return new FileInfo(path).LinkTarget is not null; } catch { return false; }
    }
}

/// <summary>A fake kernel that records every call, one line each, for unit tests of engine steps.</summary>
public sealed class RecordingSyscalls : ISyscalls
{
    public List<string> Calls { get; } = [];
    /// <summary>Paths that "exist"; directories end without a slash and are listed in
    /// <see cref="Directories"/>.</summary>
    public HashSet<string> Files { get; } = [];
    public HashSet<string> Directories { get; } = ["/"];
    /// <summary>Makes the named call (by its first word) fail with this errno.</summary>
    public Dictionary<string, int> FailOn { get; } = [];

    void Rec(string name, string line)
    {
        Calls.Add(line);
        if (FailOn.TryGetValue(name, out var errno)) throw new LinuxException(errno, line);
    }

    public void Mount(string? source, string target, string? fstype, ulong flags, string? data) =>
        Rec("mount", $"mount {source ?? "none"} {target} {fstype ?? "-"} 0x{flags:x} {data ?? "-"}");
    public void AttachMount(int tree, string target) => Rec("move_mount", $"move_mount fd {tree} {target}");
    public void Umount(string target, int flags) => Rec("umount", $"umount {target} {flags}");
    public void PivotRoot(string newRoot, string putOld) => Rec("pivot_root", $"pivot_root {newRoot} {putOld}");
    public void Chroot(string path) => Rec("chroot", $"chroot {path}");
    public void Chdir(string path) => Rec("chdir", $"chdir {path}");
    public SafeFd OpenDirectory(string path) { Rec("open", $"open {path}"); return new SafeFd(); }
    public void Fchdir(SafeFd dir) => Rec("fchdir", "fchdir");
    public void MkdirAll(string path, uint mode) { Rec("mkdir",
        $"mkdir {path} {Convert.ToString(mode, 8)}"); Directories.Add(path); }
    public void CreateFile(string path, uint mode) { Rec("create", $"create {path}"); Files.Add(path); }
    public void Mknod(string path, uint mode,
        ulong dev) { Rec("mknod", $"mknod {path} {Convert.ToString(mode, 8)} {dev >> 8}:{dev & 0xff}"); Files.Add(
        path); }
    public void Symlink(string target, string linkPath) { Rec("symlink",
        $"symlink {linkPath} -> {target}"); Files.Add(linkPath); }
    public void Chown(string path, uint uid, uint gid) => Rec("chown", $"chown {path} {uid}:{gid}");
    public void Chmod(string path, uint mode) => Rec("chmod", $"chmod {path} {Convert.ToString(mode, 8)}");
    public void WriteFile(string path, string content) => Rec("write", $"write {path} {content}");
    public void SetHostname(string name) => Rec("sethostname", $"sethostname {name}");
    public void SetDomainname(string name) => Rec("setdomainname", $"setdomainname {name}");
    public bool Exists(string path) => Files.Contains(path) || Directories.Contains(path);
    public bool IsDirectory(string path) => Directories.Contains(path);
}
