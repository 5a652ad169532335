namespace Hull.Seccomp;

/// <summary>seccomp(2) SECCOMP_SET_MODE_FILTER flags (linux/seccomp.h).</summary>
[Flags]
public enum SeccompFilterFlags : uint
{
    None = 0,
    Tsync = 1,
    Log = 2,
    SpecAllow = 4,
    NewListener = 8,
    TsyncEsrch = 16,
    WaitKillableRecv = 32,
}

/// <summary>Where a syscall number is interpreted: the ABI the calling task used.</summary>
public enum SeccompArch
{
    /// <summary>AUDIT_ARCH_X86_64, syscall numbers below __X32_SYSCALL_BIT.</summary>
    X86_64,
    /// <summary>AUDIT_ARCH_I386 (int 0x80 / sysenter / compat), arguments compared as 32-bit values.</summary>
    X86,
    /// <summary>AUDIT_ARCH_X86_64 with __X32_SYSCALL_BIT set in the number.</summary>
    X32,
}

/// <summary>A compiled seccomp filter: the BPF program and how to load it.</summary>
public sealed class SeccompProgram
{
    internal SeccompProgram(SockFilter[] instructions, SeccompFilterFlags flags, bool needsListener,
        uint defaultAction, uint badArchAction, IReadOnlyList<SeccompArch> architectures, IReadOnlyList<string> skipped)
    {
        Instructions = instructions;
        Flags = flags;
        NeedsListener = needsListener;
        DefaultAction = defaultAction;
        BadArchAction = badArchAction;
        Architectures = architectures;
        Skipped = skipped;
    }

    /// <summary>The sock_filter array handed to the kernel.</summary>
    public SockFilter[] Instructions { get; }

    /// <summary>The flags for seccomp(SECCOMP_SET_MODE_FILTER, flags, prog); includes NewListener when
    /// <see cref="NeedsListener"/>.</summary>
    public SeccompFilterFlags Flags { get; }

    /// <summary>True when the profile uses SCMP_ACT_NOTIFY: <see cref="SeccompLoader.Load"/> returns the notify
    /// fd.</summary>
    public bool NeedsListener { get; }

    /// <summary>The seccomp return value for calls that no rule matches.</summary>
    public uint DefaultAction { get; }

    /// <summary>The return value for a call made through an ABI the filter does not cover
    /// (SECCOMP_RET_KILL_PROCESS).</summary>
    public uint BadArchAction { get; }

    /// <summary>The architectures the program checks, native first.</summary>
    public IReadOnlyList<SeccompArch> Architectures { get; }

    /// <summary>What the compiler left out, as runc does: "name (arch)" for syscall names this architecture does not
    /// have,
    /// and architecture names of other hosts. For logging; never an error.</summary>
    public IReadOnlyList<string> Skipped { get; }

    /// <summary>The same program with more load flags (the engine adds Tsync when other threads must share the filter).
    /// Tsync together with a listener also sets TsyncEsrch, which the kernel requires for that combination.</summary>
    public SeccompProgram WithFlags(SeccompFilterFlags add)
    {
        var f = Flags | add;
        if ((f & SeccompFilterFlags.Tsync) != 0
            && (f & SeccompFilterFlags.NewListener) != 0) f |= SeccompFilterFlags.TsyncEsrch;
        return new SeccompProgram(Instructions, f, NeedsListener, DefaultAction, BadArchAction, Architectures, Skipped);
    }

    /// <summary>A readable listing, one instruction a line with its index.</summary>
    public string Disassemble()
    {
        var sb = new System.Text.StringBuilder();
        for (var i = 0; i < Instructions.Length; i++) sb.Append(i.ToString().PadLeft(4)).Append(": ").Append(
            Instructions[i]).Append('\n');
        return sb.ToString();
    }
}

/// <summary>A seccomp profile that cannot be compiled; the message names the field and the valid values.</summary>
public sealed class SeccompException(string message) : Exception(message);
