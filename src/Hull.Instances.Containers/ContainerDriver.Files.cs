using System.Globalization;
using System.Net.Sockets;
using System.Text.Json;
using Hull.Api;
using Hull.Containers;
using Hull.Linux;
using Hull.Oci;
using Microsoft.Win32.SafeHandles;

namespace Hull.Instances.Containers;

/// <summary>The file API (resolved inside the container's root: its mount namespace view while it runs), the console
/// and the log.</summary>
public sealed partial class ContainerDriver
{
    // ---- files: resolved inside the container's root (its mount namespace view while it runs) ----

    /// <summary>An fd for the instance's root: /proc/PID/root while it runs, else the overlay (mounted for the call and
    /// detached at once: the fd keeps it alive until closed).</summary>
    SafeFd OpenRoot(InstanceSpec spec)
    {
        if (Find(spec) is { Status: ContainerStatus.Running or ContainerStatus.Paused } f)
        {
            var fd = Sys.Open($"/proc/{f.Pid}/root", O.RDONLY | O.DIRECTORY);
            if (ProcFs.IsAlive(f.Pid, f.StartTime)) return fd;
            fd.Dispose();
        }
        Lock(spec).Wait();
        try
        {
            if (IsMounted(Rootfs(spec))) return Sys.Open(Rootfs(spec), O.RDONLY | O.DIRECTORY);
            MountRootfs(spec);
            try { return Sys.Open(Rootfs(spec), O.RDONLY | O.DIRECTORY); }
            finally { UnmountRootfs(spec); }
        }
        finally { Lock(spec).Release(); }
    }

    static string TypeOf(uint mode) => (mode & 0xF000) switch { 0x8000 => "file", 0x4000 => "directory",
        0xA000 => "symlink", _ => "special" };

    /// <summary>A file's description, with its owners as the container sees them.</summary>
    static FileEntry Entry(InstanceSpec spec, string name, SafeFd fd)
    {
        var st = RootedFs.FStat(fd);
        var (uid, gid) = Unprivileged.Inside(Unprivileged.OnDisk(spec), st.Uid, st.Gid);
        return new FileEntry { Name = name, Type = TypeOf(st.Mode), Size = st.Size, Mode = (int)(st.Mode & 0xFFF),
            Uid = uid, Gid = gid };
    }

    static InstanceException NotFound(InstanceSpec spec, string path) =>
        new($"{path} does not exist in instance '{spec.Name}'", 404);

    static SafeFd OpenIn(InstanceSpec spec, SafeFd root, string path, int flags, uint mode = 0)
    {
        if (RootedFs.TryOpen(root, path, flags, mode, out var fd, out var e)) return fd;
        if (e == Errors.ENOENT) throw NotFound(spec, path);
        if (e == Errors.ENOTDIR) throw new InstanceException(
            $"{path} in instance '{spec.Name}': a parent is not a directory");
        if (e == Errors.EISDIR) throw new InstanceException($"{path} in instance '{spec.Name}' is a directory");
        throw new InstanceException($"{path} in instance '{spec.Name}': {Errors.Describe(e)}", 500);
    }

    public Task<FileEntry?> StatFileAsync(InstanceSpec spec, string path, CancellationToken ct)
    {
        using var root = OpenRoot(spec);
        if (!RootedFs.TryOpen(root, path, O.PATH, 0, out var fd, out var e))
            return e == Errors.ENOENT || e == Errors.ENOTDIR ? Task.FromResult<FileEntry?>(null)
                : throw new InstanceException($"{path}: {Errors.Describe(e)}", 500);
        using (fd) return Task.FromResult<FileEntry?>(
            Entry(spec, Path.GetFileName(path.TrimEnd('/')) is { Length: > 0 } n ? n : "/", fd));
    }

    public Task<Stream> PullFileAsync(InstanceSpec spec, string path, CancellationToken ct)
    {
        using var root = OpenRoot(spec);
        // O_NONBLOCK: a fifo swapped in after the stat must not hang the open (it is refused below).
        var fd = OpenIn(spec, root, path, O.RDONLY | O.NONBLOCK);
        if (TypeOf(RootedFs.FStat(fd).Mode) != "file") { fd.Dispose(); throw new InstanceException(
            $"{path} in instance '{spec.Name}' is not a regular file"); }
        return Task.FromResult<Stream>(new FileStream(new SafeFileHandle(fd.Detach(), true), FileAccess.Read, 1));
    }

    public Task<IReadOnlyList<FileEntry>> ListFilesAsync(InstanceSpec spec, string path, CancellationToken ct)
    {
        using var root = OpenRoot(spec);
        using var dir = OpenIn(spec, root, path, O.RDONLY | O.DIRECTORY);
        var list = new List<FileEntry>();
        foreach (var child in Directory.EnumerateFileSystemEntries($"/proc/self/fd/{dir.Fd}").Select(x =>
            Path.GetFileName(x)!).Order(StringComparer.Ordinal))
        {
            if (RootedFs.TryOpen(dir, child, O.PATH | O.NOFOLLOW, 0, out var cfd, out _))
                using (cfd) list.Add(Entry(spec, child, cfd));
        }
        return Task.FromResult<IReadOnlyList<FileEntry>>(list);
    }

    public async Task PushFileAsync(InstanceSpec spec, string path, Stream content, FileMeta meta, CancellationToken ct)
    {
        if (!path.StartsWith('/') || Path.GetFileName(path).Length == 0)
            throw new InstanceException($"push target '{path}' must be an absolute file path such as /root/file.txt");
        var (uid, gid) = Unprivileged.Outside(spec, meta.Uid, meta.Gid);
        using var root = OpenRoot(spec);
        var parent = Path.GetDirectoryName(path) ?? "/";
        var cur = "/";
        foreach (var part in parent.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            using (var d = OpenIn(spec, root, cur, O.RDONLY | O.DIRECTORY))
                if (RootedFs.MkdirAt(d, part, 0b111_101_101)) Unprivileged.OwnByRoot(spec, d, part);
            cur = cur.TrimEnd('/') + "/" + part;
        }
        using var pd = OpenIn(spec, root, parent, O.RDONLY | O.DIRECTORY);
        var name = Path.GetFileName(path);
        var tmp = "." + name + ".hull-push-" + Guid.NewGuid().ToString("N")[..8];
        using (var fd = OpenIn(spec, pd, tmp, O.WRONLY | O.CREAT | O.EXCL, (uint)meta.Mode & 0xFFF))
        {
            try
            {
                RootedFs.FChown(fd, uid, gid);
                RootedFs.FChmod(fd, (uint)meta.Mode & 0xFFF);
                await using var fs = new FileStream(new SafeFileHandle(fd.DangerousGetHandle(), false),
                    FileAccess.Write, 1);
                await content.CopyToAsync(fs, ct);
            }
            catch
            {
                RootedFs.UnlinkAt(pd, tmp, false);
                throw;
            }
        }
        // renameat within one directory fd: the final name cannot escape the root.
        File.Move($"/proc/self/fd/{pd.Fd}/{tmp}", $"/proc/self/fd/{pd.Fd}/{name}", overwrite: true);
    }

    public async Task DeleteFileAsync(InstanceSpec spec, string path, CancellationToken ct)
    {
        await Task.CompletedTask;
        if (path.TrimEnd('/').Length == 0) throw new InstanceException("cannot delete / of an instance");
        using var root = OpenRoot(spec);
        FileEntry st;
        // The entry itself (a symlink is removed, not its target).
        using (var self = OpenIn(spec, root, path, O.PATH | O.NOFOLLOW)) st = Entry(spec, path, self);
        using var d = OpenIn(spec, root, Path.GetDirectoryName(path.TrimEnd('/')) ?? "/", O.RDONLY | O.DIRECTORY);
        try { RootedFs.UnlinkAt(d, Path.GetFileName(path.TrimEnd('/')), st.Type == "directory"); }
        catch (LinuxException e) { throw new InstanceException(
            $"deleting {path} in instance '{spec.Name}': {e.Message}", e.Errno == Errors.ENOTEMPTY ? 409 : 500); }
    }

    // ---- console and log ----

    /// <summary>A system container's console is its /dev/console (a pty the monitor holds): output and input. Any
    /// other container's is its init's output as console.log gets it (no input).</summary>
    public Task<IConsoleSession> AttachConsoleAsync(InstanceSpec spec, CancellationToken ct)
    {
        if (!IsRunning(spec)) throw new InstanceException($"instance '{spec.Name}' is not running", 409);
        if (RecordedInit(spec) is not null)
        {
            var fd = _monitor.AttachConsole(spec.Name);
            var s = new NetworkStream(new Socket(new SafeSocketHandle(fd.Detach(), true)), ownsSocket: true);
            return Task.FromResult<IConsoleSession>(new LogConsole(s, s));
        }
        return Task.FromResult<IConsoleSession>(
            new LogConsole(new LogFileStream(ConsoleLogPath(spec), () => IsRunning(spec), follow: true,
            fromEnd: true), null));
    }

    sealed class LogConsole(Stream output, Stream? input) : IConsoleSession
    {
        public Stream Output => output;
        public Stream? Input => input;
        public ValueTask DisposeAsync() { output.Dispose(); return ValueTask.CompletedTask; }
    }

    public Task<Stream> OpenLogAsync(InstanceSpec spec, bool follow, CancellationToken ct) =>
        Task.FromResult<Stream>(new LogFileStream(ConsoleLogPath(spec), () => IsRunning(spec), follow, fromEnd: false));
}
