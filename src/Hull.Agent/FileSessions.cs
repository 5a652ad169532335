using System.Runtime.InteropServices;
using Hull.Agent.Protocol;
using Hull.Linux;

namespace Hull.Agent;

/// <summary>
/// A push: the contents go to a new temporary file beside the target (O_EXCL, mode 0600), written as Data frames
/// arrive (each one's credit is returned once it is on disk); at Eof the file gets its mode and owner, is fsync'd
/// and renamed over the target, and the directory is fsync'd. Anything that fails or is cancelled removes the
/// temporary file, so the target is either the old file or the whole new one.
/// </summary>
public sealed class PushSession(AgentServer agent, uint id) : AgentSession(agent, id)
{
    PushRequest _req = new();
    SafeFd? _fd;
    string? _temp;
    long _written;

    public override void Start(byte[] payload)
    {
        _req = AgentJson.Decode(payload, AgentJson.Default.PushRequest);
        var path = _req.Path;
        if (!path.StartsWith('/') || path.EndsWith('/')) throw new AgentFailure(
            $"push: '{path}' is not an absolute file path", Errors.EINVAL);
        var dir = Path.GetDirectoryName(path) ?? "/";
        var name = Path.GetFileName(path);
        if (_req.MakeParents) FileOps.MkdirAll(dir, 0b111_101_101, $"push {path}");
        else if (!GuestSys.TryStat(dir, true, out var d, out var derr))
            throw new AgentFailure($"push {path}: the directory {dir} does not exist in the guest " +
                $"({Errors.Describe(derr)}); ask for parent directories to be made", derr);
        else if (d.Type != StatxInfo.S_IFDIR)
            throw new AgentFailure($"push {path}: {dir} is not a directory", Errors.ENOTDIR);
        _temp = Path.Combine(dir, $".{name}.hull-push-{Random.Shared.Next():x8}");
        if (!Sys.TryOpen(_temp, O.WRONLY | O.CREAT | O.EXCL | O.NOFOLLOW, out var fd, out var errno, 0b110_000_000))
        {
            _temp = null;
            throw new AgentFailure($"push {path}: cannot create a file in {dir}: {Errors.Describe(errno)}", errno);
        }
        _fd = fd;
    }

    public override void OnFrame(Frame f)
    {
        if (_fd is null) return;
        try
        {
            switch (f.Type)
            {
                case FrameType.Data when f.Stream == StreamId.File:
                    Sys.WriteAll(_fd, f.Payload, $"write {_temp}");
                    _written += f.Payload.Length;
                    Send(FrameType.Window, StreamId.File, Wire.U32((uint)f.Payload.Length));
                    break;
                case FrameType.Eof when f.Stream == StreamId.File:
                    Complete();
                    break;
                case FrameType.Cancel:
                    Abort();
                    Agent.Finished(this);
                    break;
            }
        }
        catch (LinuxException e)
        {
            Fail($"push {_req.Path}: {e.Message}", e.Errno);
        }
    }

    void Complete()
    {
        var path = _req.Path;
        var fd = _fd!;
        GuestSys.Fchmod(fd, _req.Mode & 0xFFF, path);
        GuestSys.Fchown(fd, _req.Uid, _req.Gid, path);
        // chown clears setuid/setgid: apply the mode again.
        GuestSys.Fchmod(fd, _req.Mode & 0xFFF, path);
        GuestSys.Fsync(fd, path);
        fd.Dispose();
        _fd = null;
        if (GuestSys.TryStat(path, false, out var existing, out _) && existing.Type == StatxInfo.S_IFDIR)
            throw new LinuxException(Errors.EISDIR, $"replace {path}");
        GuestSys.Rename(_temp!, path);
        _temp = null;
        try
        {
            using var dirFd = Sys.Open(Path.GetDirectoryName(path) ?? "/", O.RDONLY | O.DIRECTORY);
            GuestSys.Fsync(dirFd, "directory");
        }
        catch (LinuxException) { }
        var stat = FileOps.Stat(path);
        Send(FrameType.Result, 0, AgentJson.Encode(stat, AgentJson.Default.FileStat));
        Agent.Close(this);
        Agent.Finished(this);
    }

    public override void Abort()
    {
        Agent.Close(this);
        _fd?.Dispose();
        _fd = null;
        if (_temp is not null) Libc.unlink(_temp);
        _temp = null;
    }
}

/// <summary>A pull: one thread reads the file, taking the host's credit before each chunk.</summary>
public sealed class PullSession(AgentServer agent, uint id) : AgentSession(agent, id)
{
    readonly Credit _credit = new();
    SafeFd? _fd;

    public override void Start(byte[] payload)
    {
        var path = AgentJson.Decode(payload, AgentJson.Default.PathRequest).Path;
        if (!path.StartsWith('/')) throw new AgentFailure($"pull: '{path}' is not an absolute path", Errors.EINVAL);
        if (!Sys.TryOpen(path, O.RDONLY | O.NOCTTY, out var fd, out var errno))
            throw new AgentFailure($"pull {path}: {Errors.Describe(errno)}", errno);
        _fd = fd;
        var st = GuestSys.Fstat(fd);
        if (st.Type == StatxInfo.S_IFDIR) throw new AgentFailure(
            $"pull {path}: is a directory ({Errors.Describe(Errors.EISDIR)}); pull files one by one", Errors.EISDIR);
        Send(FrameType.Result, 0, AgentJson.Encode(FileOps.ToStat(path, st), AgentJson.Default.FileStat));
        StartThread($"pull {Id}", () => Pump(path));
    }

    void Pump(string path)
    {
        var fd = _fd!;
        var buf = new byte[Wire.ChunkSize];
        try
        {
            while (true)
            {
                var n = _credit.Take(buf.Length, CancellationToken.None);
                if (n == 0) return; // cancelled
                var r = Sys.Read(fd, buf.AsSpan(0, n));
                if (r < n) _credit.Add(n - r);
                if (r == 0) break;
                Send(FrameType.Data, StreamId.File, buf.AsSpan(0, r));
            }
            Send(FrameType.Eof, StreamId.File, []);
            Agent.Close(this);
            Agent.Finished(this);
        }
        catch (LinuxException e)
        {
            Fail($"pull {path}: {e.Message}", e.Errno);
        }
        finally
        {
            fd.Dispose();
        }
    }

    public override void OnFrame(Frame f)
    {
        if (f.Type == FrameType.Window && f.Payload.Length == 4)
            _credit.Add(System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(f.Payload));
        else if (f.Type == FrameType.Cancel)
        {
            Abort();
            Agent.Finished(this);
        }
    }

    public override void Abort()
    {
        Agent.Close(this);
        _credit.Close();
    }
}

/// <summary>The one-frame file operations: stat, mkdir, remove (and the power request's validation).</summary>
public static class FileOps
{
    public static byte[] Run(FrameType type, byte[] payload)
    {
        switch (type)
        {
            case FrameType.Stat:
            {
                var path = AgentJson.Decode(payload, AgentJson.Default.PathRequest).Path;
                return AgentJson.Encode(Stat(path), AgentJson.Default.FileStat);
            }
            case FrameType.Mkdir:
            {
                var r = AgentJson.Decode(payload, AgentJson.Default.MkdirRequest);
                Absolute(r.Path, "mkdir");
                var what = $"mkdir {r.Path}";
                if (r.Parents) MkdirAll(r.Path, r.Mode & 0xFFF, what);
                else if (Libc.mkdir(r.Path, r.Mode & 0xFFF) < 0)
                {
                    var e = Marshal.GetLastPInvokeError();
                    throw new AgentFailure($"{what}: {Errors.Describe(e)}", e);
                }
                try
                {
                    Sys.Check(Libc.chown(r.Path, r.Uid, r.Gid), what);
                    Sys.Check(Libc.chmod(r.Path, r.Mode & 0xFFF), what);
                }
                catch (LinuxException e) { throw AgentFailure.From(what, e); }
                return AgentJson.Encode(Stat(r.Path), AgentJson.Default.FileStat);
            }
            case FrameType.Remove:
            {
                var r = AgentJson.Decode(payload, AgentJson.Default.RemoveRequest);
                Absolute(r.Path, "remove");
                if (r.Path == "/") throw new AgentFailure("remove: refusing to remove /", Errors.EINVAL);
                if (!GuestSys.TryStat(r.Path, false, out var st, out var errno)) throw new AgentFailure(
                    $"remove {r.Path}: {Errors.Describe(errno)}", errno);
                if (st.Type == StatxInfo.S_IFDIR)
                {
                    if (r.Recursive)
                    {
                        try { Directory.Delete(r.Path, recursive: true); }
                        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new
                            AgentFailure($"remove {r.Path}: {e.Message}", Errors.EIO); }
                    }
                    else if (Libc.rmdir(r.Path) < 0)
                    {
                        var e = Marshal.GetLastPInvokeError();
                        throw new AgentFailure($"remove {r.Path}: {Errors.Describe(e)}"
                            + (e == Errors.ENOTEMPTY ? "; remove it recursively" : ""), e);
                    }
                }
                else if (Libc.unlink(r.Path) < 0)
                {
                    var e = Marshal.GetLastPInvokeError();
                    throw new AgentFailure($"remove {r.Path}: {Errors.Describe(e)}", e);
                }
                return AgentJson.Encode(new OkMessage { Message = $"removed {r.Path}" }, AgentJson.Default.OkMessage);
            }
            case FrameType.Power:
            {
                var r = AgentJson.Decode(payload, AgentJson.Default.PowerRequest);
                if (r.Action is not ("poweroff" or "reboot")) throw new AgentFailure(
                    $"power: unknown action '{r.Action}' (use poweroff or reboot)", Errors.EINVAL);
                return AgentJson.Encode(new OkMessage { Message = r.Action }, AgentJson.Default.OkMessage);
            }
        }
        throw new AgentFailure($"unsupported request {type}", Errors.EINVAL);
    }

    /// <summary>A directory listing as Result payloads that each fit in one frame (the last says no more
    /// follow).</summary>
    public static List<byte[]> List(string path)
    {
        Absolute(path, "list");
        if (!GuestSys.TryStat(path, true, out var st, out var errno)) throw new AgentFailure(
            $"list {path}: {Errors.Describe(errno)}", errno);
        if (st.Type != StatxInfo.S_IFDIR) throw new AgentFailure($"list {path}: {Errors.Describe(Errors.ENOTDIR)}",
            Errors.ENOTDIR);
        var parts = new List<byte[]>();
        var cur = new DirectoryListing();
        var size = 0;
        IEnumerable<string> names;
        try { names = Directory.EnumerateFileSystemEntries(path).ToList(); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new AgentFailure(
            $"list {path}: {e.Message}", Errors.EIO); }
        foreach (var entry in names)
        {
            // An entry removed since the directory was read is left out.
            if (!GuestSys.TryStat(entry, false, out var est, out _)) continue;
            var fs = ToStat(entry, est);
            // Its exact JSON size (escaping included), so a part never exceeds a frame's payload limit.
            var cost = AgentJson.Encode(fs, AgentJson.Default.FileStat).Length + 1;
            if (size + cost > Wire.MaxPayload - 64 && cur.Entries.Count > 0)
            {
                cur.More = true;
                parts.Add(AgentJson.Encode(cur, AgentJson.Default.DirectoryListing));
                cur = new DirectoryListing();
                size = 0;
            }
            cur.Entries.Add(fs);
            size += cost;
        }
        parts.Add(AgentJson.Encode(cur, AgentJson.Default.DirectoryListing));
        return parts;
    }

    static void Absolute(string path, string op)
    {
        if (!path.StartsWith('/')) throw new AgentFailure($"{op}: '{path}' is not an absolute path", Errors.EINVAL);
    }

    public static FileStat Stat(string path)
    {
        Absolute(path, "stat");
        if (!GuestSys.TryStat(path, false, out var st, out var errno)) throw new AgentFailure(
            $"stat {path}: {Errors.Describe(errno)}", errno);
        return ToStat(path, st);
    }

    public static FileStat ToStat(string path, StatxInfo st)
    {
        string? target = null;
        if (st.Type == StatxInfo.S_IFLNK)
            try { target = new FileInfo(path).LinkTarget; } catch (IOException) { }
        return new FileStat
        {
            Path = path, Type = st.TypeName, Size = st.Size, Mode = st.Permissions, Uid = st.Uid, Gid = st.Gid,
            MtimeUnixNs = st.MtimeSec * 1_000_000_000 + st.MtimeNsec, LinkTarget = target,
        };
    }

    /// <summary>mkdir -p: creates each missing component with <paramref name="mode"/>; fails if one is not a
    /// directory.</summary>
    public static void MkdirAll(string path, uint mode, string what)
    {
        var parts = path.Split('/', StringSplitOptions.RemoveEmptyEntries);
        var cur = "";
        foreach (var p in parts)
        {
            cur += "/" + p;
            if (Libc.mkdir(cur, mode) == 0) continue;
            var e = Marshal.GetLastPInvokeError();
            if (e != Errors.EEXIST) throw new AgentFailure($"{what}: creating {cur}: {Errors.Describe(e)}", e);
            if (!GuestSys.TryStat(cur, true, out var st, out _) || st.Type != StatxInfo.S_IFDIR)
                throw new AgentFailure($"{what}: {cur} exists and is not a directory", Errors.ENOTDIR);
        }
    }
}
