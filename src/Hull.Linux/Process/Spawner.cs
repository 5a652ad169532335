using System.Runtime.InteropServices;
using System.Text;

namespace Hull.Linux;

/// <summary>Where a spawned child failed before execve (matches the stages in native/hull_spawn.c).</summary>
public enum SpawnStage
{
    Unknown = 0, SyncRead = 1, Setns = 2, CgroupJoin = 3, TimeNamespace = 4, FdMap = 5, Signals = 6, Exec = 7,
    Setsid = 8, Chdir = 9, ControllingTty = 10, Files = 11, Personality = 12, CapsBounding = 13, Groups = 14, Gid = 15,
    Uid = 16, Capset = 17, Ambient = 18, NoNewPrivs = 19, Seccomp = 20, SeccompListener = 21, Clone = 100,
}

public sealed class SpawnException(SpawnStage stage, int errno, string what)
    : Exception(Describe(stage, errno, what))
{
    public SpawnStage Stage { get; } = stage;
    public int Errno { get; } = errno;

    static string Describe(SpawnStage stage, int errno, string what) => stage switch
    {
        SpawnStage.Exec => $"exec {what}: {Errors.Describe(errno)}",
        SpawnStage.Clone => $"clone3 ({what}): {Errors.Describe(errno)}",
        SpawnStage.Setns => $"joining a namespace ({what}): {Errors.Describe(errno)}",
        SpawnStage.CgroupJoin => $"joining the cgroup ({what}): {Errors.Describe(errno)}",
        SpawnStage.TimeNamespace => $"setting time namespace offsets: {Errors.Describe(errno)}",
        SpawnStage.Gid => $"setting the gid ({what}): {Errors.Describe(errno)} — is it mapped in the user namespace?",
        SpawnStage.Uid => $"setting the uid ({what}): {Errors.Describe(errno)} — is it mapped in the user namespace?",
        SpawnStage.Seccomp => $"loading the seccomp filter ({what}): {Errors.Describe(errno)}",
        SpawnStage.SeccompListener => $"handing the seccomp notify fd to the runtime ({what}): " +
            $"{Errors.Describe(errno)} — the profile must allow sendmsg, close and read",
        SpawnStage.Files => $"writing a process attribute such as an LSM label ({what}): {Errors.Describe(errno)}",
        _ => $"spawning {what} failed at {stage}: {Errors.Describe(errno)}",
    };
}

/// <summary>What the child does between clone3 and execve. Everything here is done by raw syscalls in the
/// child.</summary>
public sealed class SpawnRequest
{
    /// <summary>CLONE_NEW* flags: namespaces the child is created in.</summary>
    public ulong CloneFlags;
    /// <summary>A cgroup2 directory fd: the child starts in it (CLONE_INTO_CGROUP).</summary>
    public SafeFd? CgroupDir;
    /// <summary>When set, the child waits for one byte on this fd before doing anything else (see
    /// <see cref="SpawnedChild.Release"/>).</summary>
    public bool WaitForRelease;
    /// <summary>Executable: an fd (execveat AT_EMPTY_PATH) or a path.</summary>
    public SafeFd? ExecFd;
    public string? Path;
    public required IReadOnlyList<string> Argv;
    public required IReadOnlyList<string> Env;
    /// <summary>A pid namespace to create the child in (joined by the calling thread around clone3).</summary>
    public SafeFd? PidNamespace;
    /// <summary>Namespaces the child joins with setns(2), in this order.</summary>
    public List<(SafeFd Fd, ulong Type)> JoinNamespaces = [];
    /// <summary>Files the child writes "0" to: cgroup v1 "tasks" files, moving its single thread.</summary>
    public List<SafeFd> CgroupTaskFiles = [];
    /// <summary>If set, the child unshares a time namespace and writes this to /proc/self/timens_offsets.</summary>
    public string? TimeOffsets;
    /// <summary>fd map: Source becomes Target in the child (not close-on-exec there).</summary>
    public List<(SafeFd Source, int Target)> Fds = [];
    public bool Setsid;
    /// <summary>After setsid: make this child-side fd number its controlling terminal (TIOCSCTTY), or -1.</summary>
    public int ControllingTty = -1;
    public string? Chdir;
    /// <summary>Signal mask installed in the child before exec (bit n-1 for signal n).</summary>
    public ulong SignalMask;
    /// <summary>Credentials and attributes applied last, just before exec; null leaves the child's as they
    /// are.</summary>
    public ProcessAttributes? Attributes;
    /// <summary>Candidate paths tried in order (a PATH search done in the child's own mount namespace).</summary>
    public IReadOnlyList<string>? ExecCandidates;
    /// <summary>After joining/creating namespaces, become uid/gid 0 (of a new user namespace) before exec.</summary>
    public bool BecomeNamespaceRoot;
    /// <summary>A unix socket pair (<see cref="Sys.SocketPair"/>): when the seccomp filter is loaded with
    /// SECCOMP_FILTER_FLAG_NEW_LISTENER, the child closes its copy of ParentEnd, sends the notify fd through ChildEnd
    /// (SCM_RIGHTS), then waits for one byte on it before going on to exec (EOF: it fails at stage
    /// <see cref="SpawnStage.SeccompListener"/>). Receive the fd on ParentEnd and answer with one byte.</summary>
    public (SafeFd ChildEnd, SafeFd ParentEnd)? SeccompListener;
}

/// <summary>What the exec'ing thread becomes (see apply_and_exec in native/hull_spawn.c for the order).</summary>
public sealed class ProcessAttributes
{
    public int Umask = -1;
    public long Personality = -1;
    /// <summary>Files written first, e.g. ("/proc/thread-self/attr/exec", "exec profile") for an LSM label.</summary>
    public List<(string Path, string Data)> Files = [];
    public ulong Bounding, Effective, Permitted, Inheritable, Ambient;
    public int LastCap = 40;
    public uint Uid, Gid;
    /// <summary>Supplementary groups; null leaves them (setgroups is not called).</summary>
    public IReadOnlyList<uint>? Groups = [];
    public bool NoNewPrivileges;
    /// <summary>A classic BPF program (8 bytes per instruction) and seccomp(2) flags, or null.</summary>
    public byte[]? SeccompProgram;
    public uint SeccompFlags;
}

/// <summary>
/// Spawns processes without running managed code in the child (see native/hull_spawn.c for the invariants).
/// </summary>
public static unsafe partial class Spawner
{
    const int MaxNs = 16, MaxFds = 64;

    /// <summary>struct hull_spawn (native/hull_spawn.h), field by field: NativeSpawnLayoutTests compiles the header
    /// and checks the size and every offset.</summary>
    [StructLayout(LayoutKind.Sequential)]
    struct NativeSpawn
    {
        public ulong CloneFlags;
        public int CgroupFd, SyncFd, SyncCloseFd, ErrorFd, ExecFd;
        public byte* Path;
        public byte** Argv;
        public byte** Envp;
        public int ParentPidnsFd, ParentOwnPidnsFd;
        public int NSetns;
        public fixed int SetnsFd[MaxNs];
        public fixed int SetnsType[MaxNs];
        public int NJoin;
        public fixed int JoinFd[MaxNs];
        public byte* TimensOffsets;
        public int NFds;
        public fixed int FdSrc[MaxFds];
        public fixed int FdDst[MaxFds];
        public int Setsid;
        public int CttyFd;
        public int ExitSignal;
        public byte* Chdir;
        public ulong SigMask;
        public int ApplyProcess, Umask;
        public long Personality;
        public int NFiles;
        public fixed long FilePath[4];
        public fixed long FileData[4];
        public ulong CapBounding, CapEffective, CapPermitted, CapInheritable, CapAmbient;
        public int LastCap, Uid, Gid, NGroups;
        public fixed uint Groups[64];
        public int NoNewPrivs;
        public void* SeccompProg;
        public uint SeccompFlags;
        public byte** ExecPaths;
        public int BecomeNsRoot;
        public int Pid, Pidfd, ErrorReadFd;
        public void* Stack;
        public int ListenerSock, ListenerCloseFd;
    }

    [LibraryImport("hullspawn", EntryPoint = "hull_spawn_start")]
    private static partial int NativeStart(NativeSpawn* s);
    [LibraryImport("hullspawn", EntryPoint = "hull_spawn_finish")]
    private static partial int NativeFinish(NativeSpawn* s, int* stage);
    [LibraryImport("hullspawn", EntryPoint = "hull_exec")]
    private static partial long NativeExec(NativeSpawn* s, int* stage);

    /// <summary>
    /// Applies <see cref="SpawnRequest.Attributes"/> to the calling thread and execs, in this process (the
    /// container init's last step). Only Path/ExecFd/ExecCandidates, Argv, Env, SignalMask and Attributes are used.
    /// Returns only by throwing.
    /// </summary>
    public static void ExecInPlace(SpawnRequest req)
    {
        using var mem = new NativeBlock();
        var s = (NativeSpawn*)mem.Alloc(sizeof(NativeSpawn));
        var refs = new List<SafeHandle>();
        try
        {
            Fill(s, req, mem, refs);
            int st = 0;
            var r = NativeExec(s, &st);
            throw new SpawnException((SpawnStage)st, (int)-r,
                req.ExecCandidates?.FirstOrDefault() ?? req.Path ?? req.Argv[0]);
        }
        finally { foreach (var h in refs) h.DangerousRelease(); }
    }

    static void Fill(NativeSpawn* s, SpawnRequest req, NativeBlock mem, List<SafeHandle> refs)
    {
        s->ExecFd = Ref(req.ExecFd, refs);
        s->Path = req.Path is null ? null : mem.Utf8(req.Path);
        s->Argv = mem.StringArray(req.Argv);
        s->Envp = mem.StringArray(req.Env);
        s->SigMask = req.SignalMask;
        s->ExecPaths = req.ExecCandidates is null ? null : mem.StringArray(req.ExecCandidates);
        s->ListenerSock = Ref(req.SeccompListener?.ChildEnd, refs);
        s->ListenerCloseFd = Ref(req.SeccompListener?.ParentEnd, refs);
        if (req.Attributes is not { } a) return;
        if (a.Files.Count > 4 || (a.Groups?.Count ?? 0) > 64) throw new ArgumentException(
            "at most 4 attribute files and 64 supplementary groups");
        s->ApplyProcess = 1;
        s->Umask = a.Umask;
        s->Personality = a.Personality;
        s->NFiles = a.Files.Count;
        for (var i = 0; i < a.Files.Count; i++) { s->FilePath[i] = (long)mem.Utf8(a.Files[i].Path); s->FileData[i] =
            (long)mem.Utf8(a.Files[i].Data); }
        s->CapBounding = a.Bounding; s->CapEffective = a.Effective; s->CapPermitted = a.Permitted;
        s->CapInheritable = a.Inheritable; s->CapAmbient = a.Ambient; s->LastCap = a.LastCap;
        s->Uid = (int)a.Uid; s->Gid = (int)a.Gid;
        s->NGroups = a.Groups is null ? -1 : a.Groups.Count;
        for (var i = 0; i < (a.Groups?.Count ?? 0); i++) s->Groups[i] = a.Groups![i];
        s->NoNewPrivs = a.NoNewPrivileges ? 1 : 0;
        if (a.SeccompProgram is { } prog)
        {
            var filter = (byte*)mem.Alloc(prog.Length);
            prog.CopyTo(new Span<byte>(filter, prog.Length));
            // struct sock_fprog { unsigned short len; struct sock_filter *filter; }
            var fprog = (byte*)mem.Alloc(16);
            *(ushort*)fprog = (ushort)(prog.Length / 8);
            *(byte**)(fprog + 8) = filter;
            s->SeccompProg = fprog;
            s->SeccompFlags = a.SeccompFlags;
        }
    }

    static SafeFd? s_ownPidNs;

    /// <summary>Starts the child. If <see cref="SpawnRequest.WaitForRelease"/> is set it waits for
    /// <see cref="SpawnedChild.Release"/>.</summary>
    public static SpawnedChild Start(SpawnRequest req)
    {
        if (req.JoinNamespaces.Count > MaxNs || req.CgroupTaskFiles.Count > MaxNs || req.Fds.Count > MaxFds)
            throw new ArgumentException("too many namespaces, cgroup files or fds for one spawn");
        var what = req.ExecCandidates?.FirstOrDefault() ?? req.Path ?? req.Argv.FirstOrDefault() ?? "?";
        var mem = new NativeBlock();
        var s = (NativeSpawn*)mem.Alloc(sizeof(NativeSpawn));
        SafeFd? syncRead = null, syncWrite = null;
        var refs = new List<SafeHandle>();
        try
        {
            s->CloneFlags = req.CloneFlags;
            s->CgroupFd = Ref(req.CgroupDir, refs);
            Fill(s, req, mem, refs);
            s->ParentPidnsFd = Ref(req.PidNamespace, refs);
            if (req.PidNamespace is not null)
            {
                s_ownPidNs ??= Sys.Open("/proc/self/ns/pid", O.RDONLY);
                s->ParentOwnPidnsFd = s_ownPidNs.Fd;
            }
            else s->ParentOwnPidnsFd = -1;
            s->NSetns = req.JoinNamespaces.Count;
            for (var i = 0; i < req.JoinNamespaces.Count; i++)
            {
                s->SetnsFd[i] = Ref(req.JoinNamespaces[i].Fd, refs);
                s->SetnsType[i] = (int)req.JoinNamespaces[i].Type;
            }
            s->NJoin = req.CgroupTaskFiles.Count;
            for (var i = 0; i < req.CgroupTaskFiles.Count; i++) s->JoinFd[i] = Ref(req.CgroupTaskFiles[i], refs);
            s->TimensOffsets = req.TimeOffsets is null ? null : mem.Utf8(req.TimeOffsets);
            s->NFds = req.Fds.Count;
            for (var i = 0; i < req.Fds.Count; i++)
            {
                s->FdSrc[i] = Ref(req.Fds[i].Source, refs);
                s->FdDst[i] = req.Fds[i].Target;
            }
            s->Setsid = req.Setsid ? 1 : 0;
            s->BecomeNsRoot = req.BecomeNamespaceRoot ? 1 : 0;
            s->CttyFd = req.ControllingTty;
            s->ExitSignal = Signals.SIGCHLD;
            s->Chdir = req.Chdir is null ? null : mem.Utf8(req.Chdir);
            s->SyncFd = -1;
            s->SyncCloseFd = -1;
            if (req.WaitForRelease)
            {
                (syncRead, syncWrite) = Sys.Pipe();
                s->SyncFd = syncRead.Fd;
                s->SyncCloseFd = syncWrite.Fd;
            }
            var r = NativeStart(s);
            if (r < 0) throw new SpawnException(SpawnStage.Clone, -r, what);
            syncRead?.Dispose();
            var child = new SpawnedChild(s->Pid, new SafeFd(s->Pidfd), mem, s, syncWrite, refs, what);
            mem = null!;
            syncWrite = null;
            refs = null!;
            return child;
        }
        finally
        {
            syncRead?.Dispose();
            syncWrite?.Dispose();
            if (refs is not null) foreach (var h in refs) h.DangerousRelease();
            mem?.Dispose();
        }
    }

    static int Ref(SafeHandle? h, List<SafeHandle> refs)
    {
        if (h is null) return -1;
        var ok = false;
        h.DangerousAddRef(ref ok);
        refs.Add(h);
        return (int)h.DangerousGetHandle();
    }

    internal static int Finish(void* s, out SpawnStage stage)
    {
        int st = 0;
        var r = NativeFinish((NativeSpawn*)s, &st);
        stage = (SpawnStage)st;
        return r;
    }

    /// <summary>Spawns, waits for exec, and returns the running child. For children that need no parent-side
    /// setup.</summary>
    public static SpawnedChild Spawn(SpawnRequest req)
    {
        var c = Start(req);
        try { c.Finish(); return c; }
        catch { c.Dispose(); throw; }
    }
}

/// <summary>A child started by <see cref="Spawner"/>: its pid, its pidfd, and the handshake until execve.</summary>
public sealed unsafe class SpawnedChild : IDisposable
{
    NativeBlock? _mem;
    readonly void* _native;
    SafeFd? _sync;
    List<SafeHandle>? _refs;
    readonly string _what;

    public int Pid { get; }
    public SafeFd Pidfd { get; }

    internal SpawnedChild(int pid, SafeFd pidfd, NativeBlock mem, void* native, SafeFd? sync, List<SafeHandle> refs,
        string what)
    {
        Pid = pid; Pidfd = pidfd; _mem = mem; _native = native; _sync = sync; _refs = refs; _what = what;
    }

    /// <summary>Lets a child that waits for release go on.</summary>
    public void Release()
    {
        if (_sync is null) return;
        Sys.WriteAll(_sync, "1"u8, "release child");
        _sync.Dispose();
        _sync = null;
    }

    /// <summary>Waits until the child has exec'd; throws <see cref="SpawnException"/> if it failed (the child is then
    /// reaped).</summary>
    public void Finish()
    {
        if (_mem is null) return;
        Release();
        var r = Spawner.Finish(_native, out var stage);
        FreeNative();
        if (r < 0) throw new SpawnException(stage, -r, _what);
    }

    /// <summary>Abandons a child that waits for release: it exits quietly (status 126) and is reaped here.</summary>
    public void Abort()
    {
        if (_mem is null) return;
        _sync?.Dispose();
        _sync = null;
        Spawner.Finish(_native, out _);
        FreeNative();
        Libc.kill(Pid, Signals.SIGKILL);
        Sys.WaitPid(Pid);
    }

    void FreeNative()
    {
        if (_refs is not null) foreach (var h in _refs) h.DangerousRelease();
        _refs = null;
        _mem?.Dispose();
        _mem = null;
    }

    public void Dispose()
    {
        if (_mem is not null) Abort();
        Pidfd.Dispose();
    }
}

/// <summary>Unmanaged allocations freed together.</summary>
internal sealed unsafe class NativeBlock : IDisposable
{
    readonly List<nint> _blocks = [];

    public void* Alloc(int size)
    {
        var p = NativeMemory.AllocZeroed((nuint)size);
        _blocks.Add((nint)p);
        return p;
    }

    public byte* Utf8(string s)
    {
        var n = Encoding.UTF8.GetByteCount(s);
        var p = (byte*)Alloc(n + 1);
        Encoding.UTF8.GetBytes(s, new Span<byte>(p, n));
        return p;
    }

    public byte** StringArray(IReadOnlyList<string> items)
    {
        var arr = (byte**)Alloc((items.Count + 1) * sizeof(nint));
        for (var i = 0; i < items.Count; i++) arr[i] = Utf8(items[i]);
        return arr;
    }

    public void Dispose()
    {
        foreach (var b in _blocks) NativeMemory.Free((void*)b);
        _blocks.Clear();
    }
}
