using System.Runtime.InteropServices;
using System.Text;

namespace Hull.Linux.Bpf;

/// <summary>A failed bpf(2) call: the command, the errno, and for a program load the verifier's log.</summary>
public sealed class BpfException(string operation, int errno, string? verifierLog = null)
    : Exception($"{operation}: {Errors.Describe(errno)}{Hint(errno)}"
        + (string.IsNullOrWhiteSpace(verifierLog) ? "" : "\nverifier log:\n" + verifierLog.TrimEnd()))
{
    public int Errno { get; } = errno;
    public string Operation { get; } = operation;
    /// <summary>What the verifier printed for a refused program (BPF_PROG_LOAD), or null.</summary>
    public string? VerifierLog { get; } = verifierLog;

    static string Hint(int errno) => errno switch
    {
        Errors.EPERM => " — bpf(2) needs CAP_SYS_ADMIN (or CAP_BPF with CAP_NET_ADMIN/CAP_PERFMON) in the initial " +
            "user namespace; kernel.unprivileged_bpf_disabled does not matter for root",
        Errors.ENOSYS => " — the kernel has no bpf(2) (CONFIG_BPF_SYSCALL)",
        _ => "",
    };
}

/// <summary>bpf(2) program types, attach types and flags used by Hull (linux/bpf.h).</summary>
public static class BpfConst
{
    public const int PROG_LOAD = 5, PROG_ATTACH = 8, PROG_DETACH = 9, PROG_GET_FD_BY_ID = 13, PROG_QUERY = 16;
    public const uint PROG_TYPE_CGROUP_DEVICE = 15;
    public const uint CGROUP_DEVICE = 6;
    public const uint F_ALLOW_OVERRIDE = 1, F_ALLOW_MULTI = 2, F_REPLACE = 4;
    /// <summary>struct bpf_cgroup_dev_ctx: access_type = (access &lt;&lt; 16) | type.</summary>
    public const int DEVCG_DEV_BLOCK = 1, DEVCG_DEV_CHAR = 2, DEVCG_ACC_MKNOD = 1, DEVCG_ACC_READ = 2,
        DEVCG_ACC_WRITE = 4;
}

/// <summary>Thin throwing wrappers over the bpf(2) commands Hull needs; every fd comes back as a
/// <see cref="SafeFd"/>.</summary>
public static unsafe class BpfSys
{
    // Big enough for every field used here; the unused rest stays zero, which is what the kernel checks.
    const int AttrSize = 128;

    static long Call(int cmd, byte* attr) => Libc.syscall(SYS.bpf, cmd, (long)attr, AttrSize, 0, 0, 0);

    /// <summary>
    /// BPF_PROG_LOAD. On failure the verifier is asked again with its log on, and the log is part of the exception.
    /// <paramref name="name"/> (at most 15 characters of [A-Za-z0-9_.]) shows up in bpftool.
    /// </summary>
    public static SafeFd ProgLoad(uint progType, ReadOnlySpan<BpfInsn> insns, string license, string? name = null,
        uint expectedAttachType = 0)
    {
        if (name is { Length: > 15 }) throw new ArgumentException("a BPF program name has at most 15 characters",
            nameof(name));
        var r = Load(progType, insns, license, name, expectedAttachType, null, 0, out var errno);
        if (r >= 0) return new SafeFd((int)r);
        // Second try with the verifier log (a first try without it is cheaper when all goes well, as libbpf does).
        string? log = null;
        if (errno is Errors.EINVAL or Errors.EACCES or Errors.EPERM or 7 /* E2BIG */)
        {
            const int logSize = 1 << 20;
            var buf = (byte*)NativeMemory.AllocZeroed(logSize);
            try
            {
                var r2 = Load(progType, insns, license, name, expectedAttachType, buf, logSize, out _);
                if (r2 >= 0) return new SafeFd((int)r2);   // accepted after all
                log = Marshal.PtrToStringUTF8((nint)buf);
            }
            finally { NativeMemory.Free(buf); }
        }
        throw new BpfException($"BPF_PROG_LOAD ({insns.Length} instructions{(name is null ? "" : ", " + name)})", errno,
            log);
    }

    static long Load(uint progType, ReadOnlySpan<BpfInsn> insns, string license, string? name, uint expectedAttachType,
        byte* log, int logSize, out int errno)
    {
        var lic = Encoding.ASCII.GetBytes(license + "\0");
        byte* attr = stackalloc byte[AttrSize];
        new Span<byte>(attr, AttrSize).Clear();
        fixed (BpfInsn* pi = insns)
        fixed (byte* pl = lic)
        {
            *(uint*)(attr + 0) = progType;
            *(uint*)(attr + 4) = (uint)insns.Length;
            *(ulong*)(attr + 8) = (ulong)pi;
            *(ulong*)(attr + 16) = (ulong)pl;
            if (log is not null)
            {
                *(uint*)(attr + 24) = 1;              // log_level
                *(uint*)(attr + 28) = (uint)logSize;
                *(ulong*)(attr + 32) = (ulong)log;
            }
            if (name is not null) Encoding.ASCII.GetBytes(name, new Span<byte>(attr + 48, 15));
            *(uint*)(attr + 68) = expectedAttachType;
            var r = Call(BpfConst.PROG_LOAD, attr);
            errno = r < 0 ? Marshal.GetLastPInvokeError() : 0;
            return r;
        }
    }

    /// <summary>BPF_PROG_ATTACH of <paramref name="prog"/> to <paramref name="target"/> (a cgroup directory
    /// fd).</summary>
    public static void ProgAttach(SafeFd target, SafeFd prog, uint attachType, uint flags, SafeFd? replace = null)
    {
        byte* attr = stackalloc byte[AttrSize];
        new Span<byte>(attr, AttrSize).Clear();
        *(uint*)(attr + 0) = (uint)target.Fd;
        *(uint*)(attr + 4) = (uint)prog.Fd;
        *(uint*)(attr + 8) = attachType;
        *(uint*)(attr + 12) = flags;
        if (replace is not null) *(uint*)(attr + 16) = (uint)replace.Fd;
        if (Call(BpfConst.PROG_ATTACH, attr) < 0)
            throw new BpfException($"BPF_PROG_ATTACH (attach type {attachType}, flags 0x{flags:x})",
                Marshal.GetLastPInvokeError());
        GC.KeepAlive(target); GC.KeepAlive(prog); GC.KeepAlive(replace);
    }

    /// <summary>BPF_PROG_DETACH of <paramref name="prog"/> from <paramref name="target"/>.</summary>
    public static void ProgDetach(SafeFd target, SafeFd prog, uint attachType)
    {
        if (!TryProgDetach(target, prog, attachType, out var errno))
            throw new BpfException($"BPF_PROG_DETACH (attach type {attachType})", errno);
    }

    public static bool TryProgDetach(SafeFd target, SafeFd prog, uint attachType, out int errno)
    {
        byte* attr = stackalloc byte[AttrSize];
        new Span<byte>(attr, AttrSize).Clear();
        *(uint*)(attr + 0) = (uint)target.Fd;
        *(uint*)(attr + 4) = (uint)prog.Fd;
        *(uint*)(attr + 8) = attachType;
        var r = Call(BpfConst.PROG_DETACH, attr);
        errno = r < 0 ? Marshal.GetLastPInvokeError() : 0;
        GC.KeepAlive(target); GC.KeepAlive(prog);
        return r >= 0;
    }

    /// <summary>
    /// BPF_PROG_QUERY: the ids of the programs attached to <paramref name="target"/> for <paramref name="attachType"/>
    /// (only those attached to this cgroup itself; <paramref name="effective"/> gives the ones in effect, inherited
    /// included), and the attach flags of the cgroup (0, BPF_F_ALLOW_OVERRIDE or BPF_F_ALLOW_MULTI).
    /// </summary>
    public static (uint[] Ids, uint AttachFlags) ProgQuery(SafeFd target, uint attachType, bool effective = false)
    {
        var cap = 16;
        byte* attr = stackalloc byte[AttrSize];
        while (true)
        {
            var ids = new uint[cap];
            new Span<byte>(attr, AttrSize).Clear();
            fixed (uint* pids = ids)
            {
                *(uint*)(attr + 0) = (uint)target.Fd;
                *(uint*)(attr + 4) = attachType;
                *(uint*)(attr + 8) = effective ? 1u : 0u;    // BPF_F_QUERY_EFFECTIVE
                *(ulong*)(attr + 16) = (ulong)pids;
                *(uint*)(attr + 24) = (uint)cap;
                var r = Call(BpfConst.PROG_QUERY, attr);
                var count = *(uint*)(attr + 24);
                if (r < 0)
                {
                    var e = Marshal.GetLastPInvokeError();
                    if (e == Errors.ENOSPC && count > cap) { cap = (int)count; continue; }
                    throw new BpfException($"BPF_PROG_QUERY (attach type {attachType})", e);
                }
                GC.KeepAlive(target);
                return (ids[..(int)Math.Min(count, (uint)cap)], *(uint*)(attr + 12));
            }
        }
    }

    /// <summary>BPF_PROG_GET_FD_BY_ID; null if no program has that id (any more).</summary>
    public static SafeFd? ProgGetFdById(uint id)
    {
        byte* attr = stackalloc byte[AttrSize];
        new Span<byte>(attr, AttrSize).Clear();
        *(uint*)attr = id;
        var r = Call(BpfConst.PROG_GET_FD_BY_ID, attr);
        if (r >= 0) return new SafeFd((int)r);
        var e = Marshal.GetLastPInvokeError();
        if (e == Errors.ENOENT) return null;
        throw new BpfException($"BPF_PROG_GET_FD_BY_ID {id}", e);
    }
}
