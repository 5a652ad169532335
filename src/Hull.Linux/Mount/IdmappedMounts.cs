using System.Runtime.InteropServices;

namespace Hull.Linux;

/// <summary>
/// Idmapped mounts (mount_setattr(2) with MOUNT_ATTR_IDMAP): a detached copy of a mount tree (open_tree(2) with
/// OPEN_TREE_CLONE) whose file owners are seen through a user namespace's mapping, and the user namespaces that carry
/// such mappings.
/// </summary>
public static unsafe class IdmappedMounts
{
    const int OPEN_TREE_CLONE = 1, AT_EMPTY_PATH = 0x1000, AT_RECURSIVE = 0x8000, MOVE_MOUNT_F_EMPTY_PATH = 4;
    const ulong MOUNT_ATTR_RDONLY = 1, MOUNT_ATTR_NOSUID = 2, MOUNT_ATTR_NODEV = 4, MOUNT_ATTR_IDMAP = 0x00100000;

    [StructLayout(LayoutKind.Sequential)]
    struct MountAttr { public ulong AttrSet, AttrClr, Propagation, UsernsFd; }

    /// <summary>
    /// An fd of a new user namespace whose uid_map and gid_map are <paramref name="uidMap"/> and
    /// <paramref name="gidMap"/>
    /// (lines "inside outside count"). It is made by a child cloned into it that never runs: the maps are written, the
    /// namespace opened, and the child abandoned and reaped (the fd keeps the namespace alive).
    /// </summary>
    public static SafeFd UserNamespace(string uidMap, string gidMap)
    {
        using var child = Spawner.Start(new SpawnRequest
        {
            CloneFlags = CLONE.NEWUSER, WaitForRelease = true, Path = "/bin/true", Argv = ["true"], Env = [],
        });
        try
        {
            foreach (var (file, map) in new[] { ("uid_map", uidMap), ("gid_map", gidMap) })
                if (!Sys.TryWriteFile($"/proc/{child.Pid}/{file}", map, out var e))
                    throw new LinuxException(e, $"writing {file} '{map.Trim()}' of a new user namespace");
            return Sys.Open($"/proc/{child.Pid}/ns/user", O.RDONLY);
        }
        finally { child.Abort(); }
    }

    /// <summary>
    /// A detached copy of the mount at <paramref name="path"/> (with the mounts below it if
    /// <paramref name="recursive"/>),
    /// made here, where the path resolves with this process's rights: a process in a new user namespace attaches it
    /// with move_mount(2) where it could not reach the path itself (a 0700 directory of its runtime's).
    /// </summary>
    public static SafeFd CloneBind(string path, bool recursive)
    {
        var p = Marshal.StringToCoTaskMemUTF8(path);
        long fd;
        try
        {
            fd = Libc.syscall(SYS.open_tree, O.AT_FDCWD, p,
                OPEN_TREE_CLONE | O.CLOEXEC | (recursive ? AT_RECURSIVE : 0),
                0, 0, 0);
        }
        finally { Marshal.FreeCoTaskMem(p); }
        if (fd < 0) throw LinuxException.FromLastError($"open_tree {path}");
        return new SafeFd((int)fd);
    }

    /// <summary>A detached, recursive copy of the mount tree at <paramref name="path"/>, idmapped through the user
    /// namespace <paramref name="userns"/> (and read-only, nosuid and nodev as asked). Attach it with
    /// <see cref="Attach"/>, or name it as /proc/self/fd/N (an overlayfs layer); closing it unmounts it.</summary>
    public static SafeFd Clone(string path, SafeFd userns, bool readOnly = false, bool nosuid = false,
        bool nodev = false,
        bool recursive = true)
    {
        var tree = CloneBind(path, recursive);
        try
        {
            var attr = new MountAttr
            {
                AttrSet = MOUNT_ATTR_IDMAP | (readOnly ? MOUNT_ATTR_RDONLY : 0) | (nosuid ? MOUNT_ATTR_NOSUID : 0)
                    | (nodev ? MOUNT_ATTR_NODEV : 0),
                UsernsFd = (ulong)userns.Fd,
            };
            var empty = stackalloc byte[1];
            empty[0] = 0;
            Sys.Check(Libc.syscall(SYS.mount_setattr, tree.Fd, (long)empty, AT_EMPTY_PATH | AT_RECURSIVE, (long)&attr,
                sizeof(MountAttr), 0), $"idmapping the mount of {path} (mount_setattr MOUNT_ATTR_IDMAP)");
            return tree;
        }
        catch { tree.Dispose(); throw; }
    }

    /// <summary>Attaches a detached mount (<see cref="Clone"/>) at <paramref name="target"/> (move_mount(2)).</summary>
    public static void Attach(SafeFd tree, string target) => Attach(tree.Fd, target);

    /// <summary>Attaches the detached mount open as fd <paramref name="tree"/> at <paramref name="target"/>.</summary>
    public static void Attach(int tree, string target)
    {
        var empty = stackalloc byte[1];
        empty[0] = 0;
        var t = Marshal.StringToCoTaskMemUTF8(target);
        try
        {
            Sys.Check(Libc.syscall(SYS.move_mount, tree, (long)empty, O.AT_FDCWD, t, MOVE_MOUNT_F_EMPTY_PATH, 0),
                $"attaching a mount at {target} (move_mount)");
        }
        finally { Marshal.FreeCoTaskMem(t); }
    }
}
