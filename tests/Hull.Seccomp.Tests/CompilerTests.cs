using Hull.Oci;
using Xunit;
using OciSeccomp = Hull.Oci.Seccomp;

namespace Hull.Seccomp.Tests;

public class CompilerTests(Xunit.Abstractions.ITestOutputHelper output)
{
    const uint Allow = Bpf.RetAllow, KillProcess = Bpf.RetKillProcess, AuditAarch64 = 0xC00000B7;
    static uint Errno(uint e) => Bpf.RetErrno | e;

    internal static OciSeccomp Profile(string defaultAction, params SeccompSyscall[] rules) =>
        new() { DefaultAction = defaultAction, Syscalls = [.. rules] };

    internal static SeccompSyscall Rule(string action, string[] names, uint? errnoRet = null,
        params SeccompArg[] args) =>
        new() { Names = [.. names], Action = action, ErrnoRet = errnoRet, Args = args.Length == 0 ? null : [.. args] };

    internal static SeccompArg Arg(uint index, string op, ulong value, ulong valueTwo = 0) =>
        new() { Index = index, Op = op, Value = value, ValueTwo = valueTwo };

    internal static uint Nr(SeccompArch arch, string name) =>
        SeccompCompiler.TryGetSyscallNumber(arch, name, out var nr) ? nr
            : throw new InvalidOperationException($"no {name} on {arch}");

    static uint ArchValue(SeccompArch a) => a == SeccompArch.X86 ? Bpf.AuditArchI386 : Bpf.AuditArchX86_64;

    internal static (uint Ret, int Steps) Run(SeccompProgram p, SeccompArch arch, string name, params ulong[] args) =>
        Run(p, ArchValue(arch), Nr(arch, name), args);

    internal static (uint Ret, int Steps) Run(SeccompProgram p, uint arch, uint nr, params ulong[] args)
    {
        BpfInterpreter.Check(p.Instructions);
        return BpfInterpreter.Run(p.Instructions, new SeccompData(nr, arch, 0x7f0000001234, args));
    }

    internal static uint Eval(SeccompProgram p, string name, params ulong[] args) =>
        Run(p, SeccompArch.X86_64, name, args).Ret;

    static readonly ulong[] Boundary =
    [
        0, 1, 5, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff, 0x1_00000000, 0x1_00000005, 0x5_00000004,
        0x5_00000005, 0x5_00000006, 0x4_00000005, 0x6_00000005, 0x4_ffffffff, 0x6_00000000, 0x8000000000000000,
        0xffffffff_ffffffff, 0xffffffff_00000000,
    ];

    static bool Reference(string op, ulong a, ulong v, ulong v2) => op switch
    {
        "SCMP_CMP_NE" => a != v,
        "SCMP_CMP_LT" => a < v,
        "SCMP_CMP_LE" => a <= v,
        "SCMP_CMP_EQ" => a == v,
        "SCMP_CMP_GE" => a >= v,
        "SCMP_CMP_GT" => a > v,
        "SCMP_CMP_MASKED_EQ" => (a & v) == v2,
        _ => throw new ArgumentException(op),
    };

    [Theory]
    [InlineData("SCMP_CMP_NE")]
    [InlineData("SCMP_CMP_LT")]
    [InlineData("SCMP_CMP_LE")]
    [InlineData("SCMP_CMP_EQ")]
    [InlineData("SCMP_CMP_GE")]
    [InlineData("SCMP_CMP_GT")]
    public void EveryOperatorComparesBothWordsOnX86_64AndTheLowWordOnI386(string op)
    {
        var index = 0u;
        foreach (var v in Boundary)
        {
            index = (index + 1) % 6;
            var profile = Profile("SCMP_ACT_ERRNO", Rule("SCMP_ACT_ALLOW", ["read"], null, Arg(index, op, v)));
            profile.Architectures = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"];
            var p = SeccompCompiler.Compile(profile);
            foreach (var a in Boundary)
            {
                var args = new ulong[6];
                Array.Fill(args, 0xdead_beef_dead_beef);
                args[index] = a;
                var expected = Reference(op, a, v, 0) ? Allow : Errno(1);
                Assert.True(expected == Eval(p, "read", args),
                    $"{op} arg{index}={a:x} value={v:x}: want {Bpf.DescribeReturn(expected)}");
                // i386: the low words only, whatever the high words hold.
                var expected32 = Reference(op, a & 0xffffffff, v & 0xffffffff, 0) ? Allow : Errno(1);
                Assert.True(expected32 == Run(p, SeccompArch.X86, "read", args).Ret,
                    $"i386 {op} arg{index}={a:x} value={v:x}: want {Bpf.DescribeReturn(expected32)}");
            }
        }
    }

    [Fact]
    public void MaskedEqMasksBothWords()
    {
        ulong[] masks = [0, 0xff, 0xffffffff, 0x1_00000000, 0xffffffff_00000000, 0xffffffff_ffffffff, 0x7E020000,
            0x8000000000000001];
        foreach (var mask in masks)
            foreach (var datum in Boundary.Append(0x7E020000u).Append(0x10000000u))
            {
                var p = SeccompCompiler.Compile(Profile("SCMP_ACT_ALLOW",
                    Rule("SCMP_ACT_ERRNO", ["openat"], 13, Arg(2, "SCMP_CMP_MASKED_EQ", mask, datum))));
                foreach (var a in Boundary.Append(0x10000000u).Append(0x7E020000u))
                {
                    var expected = (a & mask) == datum ? Errno(13) : Allow;
                    Assert.True(expected == Eval(p, "openat", 0, 0, a), $"(0x{a:x} & 0x{mask:x}) == 0x{datum:x}");
                }
            }
    }

    [Fact]
    public void ComparisonsOnOneArgumentInOneRuleAreAnded()
    {
        var p = SeccompCompiler.Compile(Profile("SCMP_ACT_ERRNO",
            Rule("SCMP_ACT_ALLOW", ["read"], null, Arg(2, "SCMP_CMP_GE", 10), Arg(2, "SCMP_CMP_LE", 20),
                Arg(0, "SCMP_CMP_EQ", 3))));
        Assert.Equal(Allow, Eval(p, "read", 3, 0, 10));
        Assert.Equal(Allow, Eval(p, "read", 3, 0, 20));
        Assert.Equal(Errno(1), Eval(p, "read", 3, 0, 9));
        Assert.Equal(Errno(1), Eval(p, "read", 3, 0, 21));
        Assert.Equal(Errno(1), Eval(p, "read", 4, 0, 15));
        Assert.Equal(Errno(1), Eval(p, "read", 3, 0, 0x1_0000000f));
    }

    [Fact]
    public void X86AbiComparesTheLowWordsOnly()
    {
        var profile = Profile("SCMP_ACT_ALLOW",
            Rule("SCMP_ACT_ERRNO", ["personality"], 22, Arg(0, "SCMP_CMP_EQ", 0xffff_ffff_0000_0005)));
        profile.Architectures = ["SCMP_ARCH_X86"];
        var p = SeccompCompiler.Compile(profile);
        Assert.Equal(Errno(22), Run(p, SeccompArch.X86, "personality", 5).Ret);
        Assert.Equal(Errno(22), Run(p, SeccompArch.X86, "personality", 0x1_00000005).Ret);
        Assert.Equal(Allow, Run(p, SeccompArch.X86, "personality", 6).Ret);
        // On x86_64 the same rule needs both words.
        Assert.Equal(Allow, Run(p, SeccompArch.X86_64, "personality", 5).Ret);
        Assert.Equal(Errno(22), Run(p, SeccompArch.X86_64, "personality", 0xffff_ffff_0000_0005).Ret);
        // i386 numbers are not x86_64 numbers: mkdir is 39 on i386, getpid on x86_64.
        var q = SeccompCompiler.Compile(new OciSeccomp { DefaultAction = "SCMP_ACT_ALLOW",
            Architectures = ["SCMP_ARCH_X86"], Syscalls = [Rule("SCMP_ACT_ERRNO", ["mkdir"])] });
        Assert.Equal(39u, Nr(SeccompArch.X86, "mkdir"));
        Assert.Equal(Errno(1), Run(q, Bpf.AuditArchI386, 39).Ret);
        Assert.Equal(Allow, Run(q, Bpf.AuditArchX86_64, 39).Ret);
        Assert.Equal(Errno(1), Run(q, Bpf.AuditArchX86_64, Nr(SeccompArch.X86_64, "mkdir")).Ret);
    }

    [Fact]
    public void ArchitectureMismatchKillsTheProcess()
    {
        var p = SeccompCompiler.Compile(Profile("SCMP_ACT_ALLOW", Rule("SCMP_ACT_ERRNO", ["mkdir"])));
        Assert.Equal([SeccompArch.X86_64], p.Architectures);
        Assert.Equal(KillProcess, p.BadArchAction);
        Assert.Equal(KillProcess, Run(p, AuditAarch64, 34).Ret);
        Assert.Equal(KillProcess, Run(p, Bpf.AuditArchI386, 39).Ret);          // i386 not in the profile
        Assert.Equal(KillProcess, Run(p, Bpf.AuditArchX86_64, Bpf.X32SyscallBit | 83).Ret); // x32 not in the profile
        // -1 (a tracer skipping a call): default
        Assert.Equal(Allow, Run(p, Bpf.AuditArchX86_64, 0xffffffff).Ret);
        Assert.Equal(Errno(1), Eval(p, "mkdir"));
        Assert.Equal(Allow, Eval(p, "getpid"));
    }

    [Fact]
    public void OtherHostsArchitecturesAreAcceptedAndSkipped()
    {
        var profile = Profile("SCMP_ACT_ERRNO", Rule("SCMP_ACT_ALLOW", ["read", "not_a_syscall_anywhere", "mmap2"]));
        profile.Architectures = ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM", "SCMP_ARCH_X86_64"];
        var p = SeccompCompiler.Compile(profile);
        Assert.Equal([SeccompArch.X86_64], p.Architectures);
        Assert.Contains("SCMP_ARCH_AARCH64 (not this host's)", p.Skipped);
        Assert.Contains("not_a_syscall_anywhere (SCMP_ARCH_X86_64)", p.Skipped);
        Assert.Contains("mmap2 (SCMP_ARCH_X86_64)", p.Skipped);
        Assert.Equal(KillProcess, Run(p, AuditAarch64, 63).Ret);
        Assert.Equal(Allow, Eval(p, "read"));
    }

    [Fact]
    public void X32UsesItsOwnNumbersAndSharesTheAuditArch()
    {
        var profile = Profile("SCMP_ACT_ALLOW", Rule("SCMP_ACT_ERRNO", ["mkdir"], 30),
            Rule("SCMP_ACT_ERRNO", ["rt_sigaction"], 31));
        profile.Architectures = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X32"];
        var p = SeccompCompiler.Compile(profile);
        Assert.Equal([SeccompArch.X86_64, SeccompArch.X32], p.Architectures);
        Assert.Equal(Bpf.X32SyscallBit | 83, Nr(SeccompArch.X32, "mkdir"));
        Assert.Equal(Bpf.X32SyscallBit | 512, Nr(SeccompArch.X32, "rt_sigaction")); // x32's own rt_sigaction
        Assert.Equal(Errno(30), Run(p, SeccompArch.X32, "mkdir").Ret);
        Assert.Equal(Errno(31), Run(p, SeccompArch.X32, "rt_sigaction").Ret);
        // the x86_64 rt_sigaction number with the x32 bit
        Assert.Equal(Allow, Run(p, Bpf.AuditArchX86_64, Bpf.X32SyscallBit | 13).Ret);
        Assert.Equal(Errno(30), Run(p, SeccompArch.X86_64, "mkdir").Ret);
        Assert.Equal(Errno(31), Run(p, SeccompArch.X86_64, "rt_sigaction").Ret);
        Assert.Equal(Allow, Run(p, Bpf.AuditArchX86_64, 0xffffffff).Ret);
        Assert.Equal(KillProcess, Run(p, Bpf.AuditArchI386, 39).Ret);
    }

    [Fact]
    public void ActionsAndErrnoValues()
    {
        var p = SeccompCompiler.Compile(new OciSeccomp
        {
            DefaultAction = "SCMP_ACT_ERRNO",
            DefaultErrnoRet = 38,
            Syscalls =
            [
                Rule("SCMP_ACT_ALLOW", ["read"]),
                Rule("SCMP_ACT_ERRNO", ["write"]),
                Rule("SCMP_ACT_ERRNO", ["open"], 0),
                Rule("SCMP_ACT_ERRNO", ["close"], 4095),
                Rule("SCMP_ACT_KILL", ["mkdir"]),
                Rule("SCMP_ACT_KILL_THREAD", ["rmdir"]),
                Rule("SCMP_ACT_KILL_PROCESS", ["unlink"]),
                Rule("SCMP_ACT_TRAP", ["chmod"]),
                Rule("SCMP_ACT_TRACE", ["chown"]),
                Rule("SCMP_ACT_TRACE", ["lchown"], 7),
                Rule("SCMP_ACT_LOG", ["link"]),
                Rule("SCMP_ACT_NOTIFY", ["symlink"]),
            ],
        });
        Assert.Equal(Errno(38), Eval(p, "getpid"));
        Assert.Equal(Errno(38), Run(p, Bpf.AuditArchX86_64, 1000).Ret);
        Assert.Equal(Allow, Eval(p, "read"));
        Assert.Equal(Errno(1), Eval(p, "write"));
        Assert.Equal(Errno(0), Eval(p, "open"));
        Assert.Equal(Errno(4095), Eval(p, "close"));
        Assert.Equal(Bpf.RetKillThread, Eval(p, "mkdir"));
        Assert.Equal(Bpf.RetKillThread, Eval(p, "rmdir"));
        Assert.Equal(Bpf.RetKillProcess, Eval(p, "unlink"));
        Assert.Equal(Bpf.RetTrap, Eval(p, "chmod"));
        Assert.Equal(Bpf.RetTrace | 1, Eval(p, "chown"));
        Assert.Equal(Bpf.RetTrace | 7, Eval(p, "lchown"));
        Assert.Equal(Bpf.RetLog, Eval(p, "link"));
        Assert.Equal(Bpf.RetUserNotif, Eval(p, "symlink"));
        Assert.True(p.NeedsListener);
        Assert.Equal(SeccompFilterFlags.NewListener, p.Flags);
        Assert.Equal(Errno(38), p.DefaultAction);
    }

    [Fact]
    public void FlagsMapToTheKernelBits()
    {
        var profile = Profile("SCMP_ACT_ALLOW", Rule("SCMP_ACT_ERRNO", ["mkdir"]));
        profile.Flags = ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"];
        var p = SeccompCompiler.Compile(profile);
        Assert.Equal(SeccompFilterFlags.Tsync | SeccompFilterFlags.Log | SeccompFilterFlags.SpecAllow, p.Flags);
        Assert.Equal(7u, (uint)p.Flags);
        Assert.False(p.NeedsListener);

        // TSYNC with a listener needs TSYNC_ESRCH, else the kernel answers EINVAL.
        var n = Profile("SCMP_ACT_ALLOW", Rule("SCMP_ACT_NOTIFY", ["mkdir"]));
        n.Flags = ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"];
        var q = SeccompCompiler.Compile(n);
        Assert.Equal(SeccompFilterFlags.Tsync | SeccompFilterFlags.NewListener | SeccompFilterFlags.TsyncEsrch |
            SeccompFilterFlags.WaitKillableRecv, q.Flags);
        Assert.Equal(SeccompFilterFlags.NewListener | SeccompFilterFlags.Tsync | SeccompFilterFlags.TsyncEsrch,
            SeccompCompiler.Compile(Profile("SCMP_ACT_ALLOW", Rule("SCMP_ACT_NOTIFY", ["mkdir"]))).WithFlags(
                SeccompFilterFlags.Tsync).Flags);

        var bad = Profile("SCMP_ACT_ALLOW", Rule("SCMP_ACT_ERRNO", ["mkdir"]));
        bad.Flags = ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"];
        Assert.Contains("SCMP_ACT_NOTIFY", Assert.Throws<SeccompException>(() => SeccompCompiler.Compile(bad)).Message);
    }

    [Theory]
    [InlineData("defaultAction", "linux.seccomp.defaultAction: unknown action \"SCMP_ACT_NOPE\"; valid values: " +
        "SCMP_ACT_KILL, SCMP_ACT_KILL_PROCESS")]
    [InlineData("action", "linux.seccomp.syscalls[0].action: unknown action \"SCMP_ACT_NOPE\"; valid values: " +
        "SCMP_ACT_KILL,")]
    [InlineData("op", "linux.seccomp.syscalls[0].args[0].op: unknown operator \"SCMP_CMP_NOPE\"; valid values: " +
        "SCMP_CMP_NE, SCMP_CMP_LT, SCMP_CMP_LE, SCMP_CMP_EQ, SCMP_CMP_GE, SCMP_CMP_GT, SCMP_CMP_MASKED_EQ")]
    [InlineData("arch", "linux.seccomp.architectures[1]: unknown architecture \"SCMP_ARCH_NOPE\"; valid values: " +
        "SCMP_ARCH_X86, SCMP_ARCH_X86_64, SCMP_ARCH_X32, SCMP_ARCH_ARM, SCMP_ARCH_AARCH64")]
    [InlineData("flag", "linux.seccomp.flags[0]: unknown flag \"SECCOMP_FILTER_FLAG_NOPE\"; valid flags: " +
        "SECCOMP_FILTER_FLAG_TSYNC, SECCOMP_FILTER_FLAG_LOG, SECCOMP_FILTER_FLAG_SPEC_ALLOW, " +
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV")]
    [InlineData("index", "linux.seccomp.syscalls[0].args[0].index is 6; a syscall has arguments 0 to 5")]
    [InlineData("errnoRet", "linux.seccomp.syscalls[0].errnoRet is set, but SCMP_ACT_ALLOW returns no errno")]
    [InlineData("errnoRange", "linux.seccomp.syscalls[0].errnoRet is 4096; an errno is 0 to 4095")]
    [InlineData("notifyDefault", "linux.seccomp.defaultAction: SCMP_ACT_NOTIFY cannot be the default action")]
    [InlineData("names", "linux.seccomp.syscalls[0].names is empty")]
    [InlineData("metadata", "linux.seccomp.listenerMetadata is set but linux.seccomp.listenerPath is not")]
    public void InvalidInputIsRejectedNamingTheFieldAndTheValidValues(string what, string message)
    {
        var p = Profile("SCMP_ACT_ALLOW", Rule("SCMP_ACT_ERRNO", ["mkdir"], null, Arg(0, "SCMP_CMP_EQ", 1)));
        switch (what)
        {
            case "defaultAction": p.DefaultAction = "SCMP_ACT_NOPE"; break;
            case "action": p.Syscalls![0].Action = "SCMP_ACT_NOPE"; break;
            case "op": p.Syscalls![0].Args![0].Op = "SCMP_CMP_NOPE"; break;
            case "arch": p.Architectures = ["SCMP_ARCH_X86_64", "SCMP_ARCH_NOPE"]; break;
            case "flag": p.Flags = ["SECCOMP_FILTER_FLAG_NOPE"]; break;
            case "index": p.Syscalls![0].Args![0].Index = 6; break;
            case "errnoRet": p.Syscalls![0].Action = "SCMP_ACT_ALLOW"; p.Syscalls[0].ErrnoRet = 1; break;
            case "errnoRange": p.Syscalls![0].ErrnoRet = 4096; break;
            case "notifyDefault": p.DefaultAction = "SCMP_ACT_NOTIFY"; break;
            case "names": p.Syscalls![0].Names = []; break;
            case "metadata": p.ListenerMetadata = "x"; break;
        }
        var e = Assert.Throws<SeccompException>(() => SeccompCompiler.Compile(p));
        Assert.StartsWith(message, e.Message);
    }

    [Fact]
    public void RuleSemanticsFollowLibseccomp()
    {
        // A rule with the default action is dropped (runc): the other rule decides.
        var p = SeccompCompiler.Compile(Profile("SCMP_ACT_ERRNO",
            Rule("SCMP_ACT_ERRNO", ["read"], null, Arg(0, "SCMP_CMP_EQ", 5)),
            Rule("SCMP_ACT_ALLOW", ["read"], null, Arg(0, "SCMP_CMP_GE", 1))));
        Assert.Equal(Allow, Eval(p, "read", 5));
        Assert.Equal(Errno(1), Eval(p, "read", 0));

        // An unconditional rule beats conditional ones, whichever comes first.
        foreach (var uncondFirst in new[] { true, false })
        {
            var u = Rule("SCMP_ACT_ERRNO", ["read"], 5);
            var c = Rule("SCMP_ACT_LOG", ["read"], null, Arg(0, "SCMP_CMP_EQ", 1));
            var q = SeccompCompiler.Compile(Profile("SCMP_ACT_ALLOW", uncondFirst ? [u, c] : [c, u]));
            Assert.Equal(Errno(5), Eval(q, "read", 1));
            Assert.Equal(Errno(5), Eval(q, "read", 2));
        }

        // Two unconditional rules with different actions: the first in profile order wins (as libseccomp).
        var first = SeccompCompiler.Compile(Profile("SCMP_ACT_ALLOW",
            Rule("SCMP_ACT_ERRNO", ["read"], 5), Rule("SCMP_ACT_ERRNO", ["write", "read"], 6)));
        Assert.Equal(Errno(5), Eval(first, "read", 0));
        Assert.Equal(Errno(6), Eval(first, "write", 0));
        // The same action twice is fine.
        SeccompCompiler.Compile(Profile("SCMP_ACT_ALLOW", Rule("SCMP_ACT_ERRNO", ["read"], 5),
            Rule("SCMP_ACT_ERRNO", ["read"], 5)));

        // The same comparisons (in any order) with different actions: error.
        var e = Assert.Throws<SeccompException>(() => SeccompCompiler.Compile(Profile("SCMP_ACT_ALLOW",
            Rule("SCMP_ACT_ERRNO", ["read"], 5, Arg(0, "SCMP_CMP_EQ", 1), Arg(1, "SCMP_CMP_EQ", 2)),
            Rule("SCMP_ACT_LOG", ["read"], null, Arg(1, "SCMP_CMP_EQ", 2), Arg(0, "SCMP_CMP_EQ", 1)))));
        Assert.Contains("with the same argument filters two different actions", e.Message);

        // The more general rule wins over one whose comparisons include all of its own, in either order.
        foreach (var generalFirst in new[] { true, false })
        {
            var g = Rule("SCMP_ACT_ERRNO", ["read"], 5, Arg(1, "SCMP_CMP_EQ", 2));
            var s = Rule("SCMP_ACT_LOG", ["read"], null, Arg(0, "SCMP_CMP_EQ", 1), Arg(1, "SCMP_CMP_EQ", 2));
            var q = SeccompCompiler.Compile(Profile("SCMP_ACT_ALLOW", generalFirst ? [g, s] : [s, g]));
            Assert.Equal(Errno(5), Eval(q, "read", 1, 2));
            Assert.Equal(Errno(5), Eval(q, "read", 0, 2));
            Assert.Equal(Allow, Eval(q, "read", 1, 3));
        }

        // Otherwise overlapping rules: the first in profile order wins; each rule is an alternative.
        var o = SeccompCompiler.Compile(Profile("SCMP_ACT_ALLOW",
            Rule("SCMP_ACT_ERRNO", ["read"], 5, Arg(0, "SCMP_CMP_GT", 10)),
            Rule("SCMP_ACT_ERRNO", ["read"], 6, Arg(1, "SCMP_CMP_EQ", 0)),
            Rule("SCMP_ACT_ERRNO", ["read"], 7, Arg(0, "SCMP_CMP_EQ", 3))));
        Assert.Equal(Errno(5), Eval(o, "read", 11, 0));
        Assert.Equal(Errno(6), Eval(o, "read", 3, 0));
        Assert.Equal(Errno(7), Eval(o, "read", 3, 1));
        Assert.Equal(Allow, Eval(o, "read", 4, 1));
    }

    [Fact]
    public void A350SyscallProfileIsABinarySearch()
    {
        var names = SeccompCompiler.SyscallNames(SeccompArch.X86_64).Order(StringComparer.Ordinal).Take(350).ToArray();
        Assert.Equal(350, names.Length);
        // Distinct errnos so that no two neighbours merge: the worst case for the tree.
        var rules = names.Select((n, i) => Rule("SCMP_ACT_ERRNO", [n], (uint)(i + 1))).ToArray();
        var p = SeccompCompiler.Compile(Profile("SCMP_ACT_ALLOW", rules));
        var maxSteps = 0;
        for (var i = 0; i < names.Length; i++)
        {
            var (ret, steps) = Run(p, SeccompArch.X86_64, names[i]);
            Assert.Equal(Errno((uint)(i + 1)), ret);
            maxSteps = Math.Max(maxSteps, steps);
        }
        for (uint nr = 0; nr < 1100; nr++)
        {
            var (_, steps) = Run(p, Bpf.AuditArchX86_64, nr);
            maxSteps = Math.Max(maxSteps, steps);
        }
        output.WriteLine($"350 syscalls, distinct actions: {p.Instructions.Length} instructions, at most {maxSteps} " +
            "executed per lookup");
        // ld arch, jeq, ld nr, jge x32, ~10 tree levels (up to 701 intervals), ret; a few ja trampolines near the root.
        Assert.True(maxSteps <= 18, $"{maxSteps} instructions for one lookup");
        Assert.True(p.Instructions.Length < 1600, $"{p.Instructions.Length} instructions");
    }

    [Fact]
    public void FarJumpsUseTrampolines()
    {
        // 300 syscalls with argument rules: the tree's leaves jump far to their blocks, and the blocks are long.
        var names = SeccompCompiler.SyscallNames(SeccompArch.X86_64).Order(StringComparer.Ordinal).Take(300).ToArray();
        var rules = names.Select((n, i) => Rule("SCMP_ACT_ERRNO", [n], (uint)(i + 1),
            Arg((uint)(i % 6), "SCMP_CMP_EQ", (ulong)i << 20))).ToList();
        rules.Add(Rule("SCMP_ACT_LOG", [names[0]], null, Arg(5, "SCMP_CMP_LT", 0x1_0000_0000)));
        var p = SeccompCompiler.Compile(Profile("SCMP_ACT_ALLOW", [.. rules]));
        Assert.True(p.Instructions.Length > 600);
        Assert.Contains(p.Instructions, i => i.Code == (Bpf.JMP | Bpf.JA) && i.K > 255);
        for (var i = 0; i < names.Length; i++)
        {
            var args = new ulong[6];
            args[i % 6] = (ulong)i << 20;
            Assert.Equal(Errno((uint)(i + 1)), Run(p, SeccompArch.X86_64, names[i], args).Ret);
            args[i % 6]++;
            if (i % 6 == 5) args[5] = 0x1_0000_0000; // keep the LOG rule of names[0] out of the way
            Assert.Equal(i == 0 ? Bpf.RetLog : Allow, Run(p, SeccompArch.X86_64, names[i], args).Ret);
        }
    }

    [Fact]
    public void TooManyInstructionsFailClearly()
    {
        SeccompSyscall[] Rules(int n) => Enumerable.Range(0, n)
            .Select(i => Rule("SCMP_ACT_ERRNO", ["ioctl"], 1, Arg(1, "SCMP_CMP_EQ", (ulong)i),
                Arg(2, "SCMP_CMP_GT", (ulong)i))).ToArray();
        var ok = SeccompCompiler.Compile(Profile("SCMP_ACT_ALLOW", Rules(400)));
        Assert.InRange(ok.Instructions.Length, 3000, Bpf.MaxInstructions);
        Assert.Equal(Bpf.RetErrno | 1, Eval(ok, "ioctl", 0, 399, 400));
        Assert.Equal(Bpf.RetAllow, Eval(ok, "ioctl", 0, 399, 399));
        var e = Assert.Throws<SeccompException>(() => SeccompCompiler.Compile(Profile("SCMP_ACT_ALLOW", Rules(600))));
        Assert.Contains("compiles to ", e.Message);
        Assert.Contains("the kernel accepts at most 4096", e.Message);
    }

    [Fact]
    public void GeneratedTablesMatchKnownNumbers()
    {
        Assert.Equal(0u, Nr(SeccompArch.X86_64, "read"));
        Assert.Equal(59u, Nr(SeccompArch.X86_64, "execve"));
        Assert.Equal(317u, Nr(SeccompArch.X86_64, "seccomp"));
        Assert.Equal(435u, Nr(SeccompArch.X86_64, "clone3"));
        Assert.Equal(11u, Nr(SeccompArch.X86, "execve"));
        Assert.Equal(192u, Nr(SeccompArch.X86, "mmap2"));
        Assert.Equal(Bpf.X32SyscallBit | 520, Nr(SeccompArch.X32, "execve"));
        Assert.False(SeccompCompiler.TryGetSyscallNumber(SeccompArch.X86_64, "mmap2", out _));
        Assert.True(SeccompCompiler.SyscallNames(SeccompArch.X86_64).Count() > 350);
    }
}
