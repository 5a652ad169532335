using System.Globalization;
using System.Text.Json;
using Hull.Api;
using Hull.Containers;
using Hull.Linux;
using Hull.Oci;
using Microsoft.Win32.SafeHandles;
using static Hull.Linux.Files;

namespace Hull.Instances.Containers;

/// <summary>The instance's storage: its own files and dirs (never reached through a symlink), its root filesystem
/// (an overlay over the image, or a copy), create, delete, export and import.</summary>
public sealed partial class ContainerDriver
{
    // ---- the instance's own files and dirs: never reached through a symlink ----
    // An instance dir may come from a backup (or be changed by hand): Hull follows no symlink among its own files
    // (lower, config.json, console.log, exit) and dirs (upper, work, rootfs, base, snapshots), so none of them can
    // stand for a host path. The container's own files inside them are reached only through RootedFs, cp -a and rm
    // (which follow no link in what they copy or remove) or by the kernel inside the container.

    static InstanceException NotOwn(InstanceSpec spec, string rel, string what) => new(
        $"{rel} in the dir of instance '{spec.Name}' {what}: Hull follows no symlink among its own files. Delete the " +
        "instance and import it again from a backup made by 'hull export'", 500);

    static SafeFd? OpenInstanceDir(InstanceSpec spec)
    {
        try { return Sys.Open(spec.Dir, O.PATH | O.DIRECTORY); }
        catch (LinuxException e) when (e.Errno == Errors.ENOENT) { return null; }
    }

    /// <summary>Opens <paramref name="rel"/> below the instance dir through no symlink; false if it does not
    /// exist.</summary>
    static bool TryOpenOwn(InstanceSpec spec, string rel, int flags, uint mode, out SafeFd fd)
    {
        using var dir = OpenInstanceDir(spec);
        fd = new SafeFd(-1);
        if (dir is null) return false;
        if (RootedFs.TryOpenBeneath(dir, rel, flags, mode, out fd, out var e)) return true;
        if (e == Errors.ENOENT) return false;
        throw NotOwn(spec, rel, e == Errors.ENOTDIR ? "is not a directory, or lies under a file"
            : e is Errors.ELOOP or Errors.EXDEV ? "is a symlink or lies under one"
                : $"cannot be opened ({Errors.Describe(e)})");
    }

    /// <summary>The path of the instance's own dir <paramref name="rel"/>, checked to be a directory reached through no
    /// symlink; null if it does not exist.</summary>
    internal static string? OwnDir(InstanceSpec spec, string rel)
    {
        if (!TryOpenOwn(spec, rel, O.PATH | O.DIRECTORY, 0, out var fd)) return null;
        fd.Dispose();
        return P(spec, rel);
    }

    /// <summary>The instance's own file <paramref name="rel"/> (a regular file, reached through no symlink); null if
    /// it does not exist.</summary>
    internal static string? ReadOwn(InstanceSpec spec, string rel)
    {
        if (!TryOpenOwn(spec, rel, O.RDONLY | O.NONBLOCK, 0, out var fd)) return null;
        using (fd)
        {
            if (TypeOf(RootedFs.FStat(fd).Mode) != "file") throw NotOwn(spec, rel, "is not a regular file");
            using var fs = new FileStream(new SafeFileHandle(fd.Detach(), true), FileAccess.Read, 1);
            return new StreamReader(fs).ReadToEnd();
        }
    }

    /// <summary>Replaces the instance's own file <paramref name="rel"/>: a new file (O_EXCL, so never through a
    /// symlink) renamed over it (rename replaces a symlink itself, not its target).</summary>
    internal static void WriteOwn(InstanceSpec spec, string rel, string text)
    {
        var tmp = P(spec, rel + ".tmp");
        File.Delete(tmp);
        using (var f = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write)) f.Write(
            System.Text.Encoding.UTF8.GetBytes(text));
        File.Move(tmp, P(spec, rel), overwrite: true);
    }

    /// <summary>console.log opened for appending: a regular file of the instance's own (created if missing).</summary>
    static SafeFd OpenConsoleLog(InstanceSpec spec)
    {
        if (TryOpenOwn(spec, "console.log", O.PATH, 0, out var probe))
            using (probe)
                if (TypeOf(RootedFs.FStat(probe).Mode) != "file") throw NotOwn(spec, "console.log",
                    "is not a regular file");
        if (!TryOpenOwn(spec, "console.log", O.WRONLY | O.CREAT | O.APPEND, 0b110_000_000, out var fd))
            throw new InstanceException($"the dir of instance '{spec.Name}' is gone", 500);
        return fd;
    }

    /// <summary>console.log for reading (null while it does not exist), refused if it is not a regular file.</summary>
    static string ConsoleLogPath(InstanceSpec spec)
    {
        if (TryOpenOwn(spec, "console.log", O.PATH, 0, out var probe))
            using (probe)
                if (TypeOf(RootedFs.FStat(probe).Mode) != "file") throw NotOwn(spec, "console.log",
                    "is not a regular file");
        return P(spec, "console.log");
    }

    // ---- create / delete ----

    public async Task CreateAsync(InstanceSpec spec, CancellationToken ct)
    {
        Directory.CreateDirectory(spec.Dir);
        var made = new List<string>();
        try
        {
            string lower;
            if (spec.CopyOf is { } cs && IsCopy(cs))
            {
                made.Add(Rootfs(spec));
                await Run(ct, "cp", "-a", "--reflink=auto",
                    OwnDir(cs, "rootfs") ?? throw NotOwn(cs, "rootfs", "is missing"), Rootfs(spec));
                WriteOwn(spec, "lower", "copy\n");
                made.Add(P(spec, Unprivileged.File));
                Unprivileged.Record(spec, Unprivileged.OnDisk(cs));
                _ids.Shift(spec, Unprivileged.Wanted(spec));
                return;
            }
            if (spec.CopyOf is { } src)
            {
                lower = LowerOf(src);
                if (lower == P(src, "base")) { made.Add(P(spec, "base")); await Run(ct, "cp", "-a", "--reflink=auto",
                    lower, P(spec, "base")); lower = P(spec, "base"); }
                made.Add(Upper(spec));
                await Run(ct, "cp", "-a", "--reflink=auto",
                    OwnDir(src, "upper") ?? throw NotOwn(src, "upper", "is missing"), Upper(spec));
            }
            else if (spec.Image.Rootfs is { } ir && Directory.Exists(ir)) lower = ir;
            else
            {
                lower = P(spec, "base");
                made.Add(lower);
                Directory.CreateDirectory(lower);
                await Run(ct, "tar", "--numeric-owner", "-xpf", spec.Image.File, "-C", lower);
            }
            foreach (var d in new[] { Upper(spec), Work(spec), Rootfs(spec) })
            {
                if (!Directory.Exists(d)) { made.Add(d); Directory.CreateDirectory(d); }
            }
            if (spec.CopyOf is null) RootModeOf(lower, Upper(spec));
            // An unpacked tarball is the instance's own: recorded relative, so a renamed instance still finds it.
            WriteOwn(spec, "lower", (lower == P(spec, "base") ? "base" : lower) + "\n");
            made.Add(P(spec, "lower"));
            // The upper dir is owned in the instance's id map (a copy's in its source's until shifted).
            made.Add(P(spec, Unprivileged.File));
            Unprivileged.Record(spec, spec.CopyOf is { } from ? Unprivileged.OnDisk(from) : null);
            _ids.Shift(spec, Unprivileged.Wanted(spec));
            // Prove the overlay can be made here now, rather than at the first start. Where it cannot (the state dir is
            // itself on an overlayfs, or on a filesystem overlayfs does not take as upper), the instance gets a full
            // copy.
            try { MountRootfs(spec); }
            catch (OverlayUnsupportedException) when (spec.CopyOf is null)
            {
                RemoveTree(Upper(spec));
                RemoveTree(Work(spec));
                RemoveTree(Rootfs(spec));
                made.Add(Rootfs(spec));
                await Run(ct, "cp", "-a", "--reflink=auto", lower, Rootfs(spec));
                if (lower == P(spec, "base")) RemoveTree(lower);
                WriteOwn(spec, "lower", "copy\n");
                Unprivileged.Record(spec, null);
                _ids.Shift(spec, Unprivileged.Wanted(spec));
            }
            // Left mounted for the start that usually follows (an unmount waits for an RCU grace period, and the
            // start would mount it again); a start remounts it if the id map changed meanwhile, delete unmounts it.
        }
        catch (Exception e)
        {
            UnmountRootfs(spec);
            foreach (var m in made) RemoveTree(m);
            if (e is InstanceException or OperationCanceledException) throw;
            throw new InstanceException($"creating the root filesystem of '{spec.Name}' failed: {e.Message}", 500);
        }
    }

    public async Task DeleteAsync(InstanceSpec spec, CancellationToken ct)
    {
        await StopAsync(spec, true, TimeSpan.Zero, ct);
        await Lock(spec).WaitAsync(ct);
        try
        {
            CleanupEngine(spec);
            UnmountRootfs(spec);
            foreach (var d in new[] { "rootfs", "upper", "work", "base", "snapshots" }) RemoveTree(P(spec, d));
            foreach (var f in new[] { "lower", "config.json", "exit", Unprivileged.File }) File.Delete(P(spec, f));
        }
        finally { Lock(spec).Release(); }
    }

    // ---- the overlay ----

    static bool IsMounted(string path)
    {
        if (MountPoint.IsMountRoot(path) is { } root) return root;
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            var mp = line.Split(' ')[4].Replace("\\040", " ");
            if (mp == path) return true;
        }
        return false;
    }

    /// <summary>True for an instance whose rootfs/ is a plain copy of the image (no overlayfs here).</summary>
    static bool IsCopy(InstanceSpec spec) => ReadOwn(spec, "lower")?.Trim() == "copy";

    /// <summary>The dir that holds the instance's own state: the overlay's upper dir, or the whole copy.</summary>
    internal static string Layer(InstanceSpec spec)
    {
        var rel = IsCopy(spec) ? "rootfs" : "upper";
        return OwnDir(spec, rel) ?? throw NotOwn(spec, rel, "is missing");
    }

    sealed class OverlayUnsupportedException(string message) : InstanceException(message, 500);

    void MountRootfs(InstanceSpec spec)
    {
        // Checked first in both modes: a copy's rootfs/ is the container's root as it is.
        var target = OwnDir(spec, "rootfs");
        if (IsCopy(spec))
        {
            if (target is null) throw NotOwn(spec, "rootfs", "is missing");
            return;
        }
        if (target is not null && IsMounted(target)) return;
        var lower = LowerOf(spec);
        if (!Directory.Exists(lower))
            throw new InstanceException($"the image root filesystem {lower} of instance '{spec.Name}' is gone: was " +
                "its image deleted?", 500);
        var upper = OwnDir(spec, "upper") ?? throw NotOwn(spec, "upper", "is missing");
        var work = OwnDir(spec, "work") ?? throw NotOwn(spec, "work", "is missing");
        foreach (var p in new[] { lower, upper, work })
            if (p.IndexOfAny([',', ':']) >= 0) throw new InstanceException(
                $"the path {p} contains ',' or ':' and cannot be an overlayfs layer: use a state dir without them",
                500);
        target ??= Directory.CreateDirectory(Rootfs(spec)).FullName;
        // Unprivileged: the shared image is seen through an idmapped mount (its files stay as they are on disk).
        SafeFd? idmapped;
        try { idmapped = Unprivileged.OnDisk(spec) is { } map ? _ids.IdmappedLower(spec, lower, map) : null; }
        catch (InstanceException e) { throw new OverlayUnsupportedException(e.Message); }
        using var _ = idmapped;
        var lowerdir = idmapped is null ? lower : $"/proc/self/fd/{idmapped.Fd}";
        try { Sys.Mount("overlay", target, "overlay", 0, $"lowerdir={lowerdir},upperdir={upper},workdir={work}"); }
        catch (LinuxException e) { throw new OverlayUnsupportedException(
            $"mounting the overlay root filesystem of '{spec.Name}' at {target}: {e.Message}"); }
    }

    /// <summary>A new upper dir takes the mode of the image's root: the overlay's root has the upper dir's mode, and
    /// a 0700 "/" would lock every user but root out of the container's files.</summary>
    static void RootModeOf(string lower, string upper)
    {
        if (!GuestSys.TryStat(lower, true, out var st, out var e)) throw new LinuxException(e, $"stat {lower}");
        Sys.Check(Libc.chmod(upper, st.Mode & 0b111_111_111_111), $"chmod {upper}");
    }

    static bool IsEmpty(string dir) => !Directory.EnumerateFileSystemEntries(dir).Any();

    static string LowerOf(InstanceSpec spec)
    {
        var lower = ReadOwn(spec, "lower")?.Trim()
            ?? throw new InstanceException($"instance '{spec.Name}' has no root filesystem ({P(spec, "lower")} is " +
                "missing): delete it and create it again", 500);
        return lower == "base" ? OwnDir(spec, "base") ?? P(spec, "base") : lower;
    }

    static void UnmountRootfs(InstanceSpec spec)
    {
        var target = Rootfs(spec);
        for (var i = 0; i < 8 && File.Exists("/proc/self/mountinfo") && IsMounted(target); i++) Libc.umount2(target,
            MS.MNT_DETACH | MS.UMOUNT_NOFOLLOW);
    }


    // ---- backup / move: the instance dir travels; the image root filesystem is the importing host's own ----

    /// <summary>A backup holds the files with the owners the container sees (shifted back at the next start).</summary>
    public Task PrepareExportAsync(InstanceSpec spec, CancellationToken ct) => Task.Run(() =>
    {
        if (!IsRunning(spec)) UnmountRootfs(spec); // not re-owned under a mounted overlay (create leaves it mounted)
        _ids.Shift(spec, null);
    }, ct);

    public IReadOnlyList<string>? ExportExcludes(InstanceSpec spec) =>
        IsCopy(spec) ? ["work", "config.json", "exit"] : ["rootfs", "work", "config.json", "exit"];

    public IReadOnlyList<string> BackupContentDirs => ["upper", "rootfs", "base", "snapshots/*/upper"];

    public Task ImportAsync(InstanceSpec spec, CancellationToken ct)
    {
        var lower = ReadOwn(spec, "lower")?.Trim()
            ?? throw new InstanceException($"the backup of '{spec.Name}' has no root filesystem record (lower): it " +
                "was not made by a container export", 400);
        // A backup holds the owners as the container sees them (whatever its idmap file says): mapped to this host's.
        Unprivileged.Record(spec, null);
        if (lower == "copy")
        {
            if (OwnDir(spec, "rootfs") is null) throw new InstanceException(
                $"the backup of '{spec.Name}' lacks its root filesystem (rootfs/)", 400);
            _ids.Shift(spec, Unprivileged.Wanted(spec));
            return Task.CompletedTask;
        }
        if (lower != "base")
        {
            // The source host's image path: this host's copy of the same image (same fingerprint) takes its place.
            if (spec.Image.Rootfs is not { } ir || !Directory.Exists(ir))
                throw new InstanceException(
                    $"image {spec.Image.Fingerprint[..Math.Min(12, spec.Image.Fingerprint.Length)]} of '{spec.Name}' " +
                    "is not on this host: copy the image here first (hull image export/import)", 409);
            WriteOwn(spec, "lower", ir + "\n");
        }
        foreach (var d in new[] { Upper(spec), Work(spec), Rootfs(spec) }) Directory.CreateDirectory(d);
        if (IsEmpty(Upper(spec))) RootModeOf(LowerOf(spec), Upper(spec));
        _ids.Shift(spec, Unprivileged.Wanted(spec));
        // Prove the overlay mounts here now rather than at the first start.
        try { MountRootfs(spec); }
        finally { UnmountRootfs(spec); }
        return Task.CompletedTask;
    }
}
