using System.Text.Json;
using Xunit;
using static Hull.Seccomp.Tests.CompilerTests;

namespace Hull.Seccomp.Tests;

public class DefaultProfileTests(Xunit.Abstractions.ITestOutputHelper output)
{
    const uint Allow = Bpf.RetAllow;
    static readonly uint Eperm = Bpf.RetErrno | 1, Enosys = Bpf.RetErrno | 38;
    const ulong SIGCHLD = 17, CLONE_VM = 0x100, CLONE_FS = 0x200, CLONE_FILES = 0x400, CLONE_SIGHAND = 0x800,
        CLONE_THREAD = 0x10000, CLONE_SYSVSEM = 0x40000, CLONE_SETTLS = 0x80000, CLONE_PARENT_SETTID = 0x100000,
        CLONE_CHILD_CLEARTID = 0x200000;
    const ulong ThreadFlags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM |
        CLONE_SETTLS | CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID;
    static readonly ulong[] NamespaceFlags =
        [0x20000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000];

    static SeccompProgram Default(params string[] caps) =>
        SeccompCompiler.Compile(SeccompProfiles.DefaultProfile(caps));

    [Fact]
    public void EveryLookupTakesAtMost40Instructions()
    {
        foreach (var caps in new string[][] { [], ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"] })
        {
            var p = Default(caps);
            Assert.Equal([SeccompArch.X86_64, SeccompArch.X86, SeccompArch.X32], p.Architectures);
            var max = 0;
            var argSets = new List<ulong[]> { new ulong[6] };
            argSets.AddRange(NamespaceFlags.Select(f => new ulong[] { f | SIGCHLD, 0, 0, 0, 0, 0 }));
            argSets.Add([ThreadFlags, 0, 0, 0, 0, 0]);
            argSets.Add([0xffffffff, 0, 0, 0, 0, 0]);
            argSets.Add([0xffff_ffff_ffff_ffff, 0xffff_ffff_ffff_ffff, 0, 0, 0, 0]);
            argSets.Add([0x20008, 0, 0, 0, 0, 0]);
            foreach (var (arch, lo, hi) in new[] { (Bpf.AuditArchX86_64, 0u, 1100u), (Bpf.AuditArchI386, 0u, 1100u),
                (Bpf.AuditArchX86_64, Bpf.X32SyscallBit, Bpf.X32SyscallBit + 1100) })
                for (var nr = lo; nr < hi; nr++)
                    foreach (var args in argSets)
                        max = Math.Max(max, Run(p, arch, nr, args).Steps);
            output.WriteLine($"default profile ({string.Join(",", caps)}): {p.Instructions.Length} instructions, at " +
                $"most {max} executed per lookup");
            Assert.True(max <= 40, $"a lookup took {max} instructions");
            Assert.True(p.Instructions.Length < 1000, $"{p.Instructions.Length} instructions");
        }
    }

    [Fact]
    public void AllowsOrdinaryProgramsAndDeniesTheDangerousCalls()
    {
        var p = Default("CAP_CHOWN", "CAP_NET_BIND_SERVICE");
        foreach (var n in new[] { "read", "write", "openat", "execve", "mmap", "futex", "rt_sigaction", "exit_group",
            "wait4", "socket", "getrandom_missing_is_ok" })
            if (SeccompCompiler.TryGetSyscallNumber(SeccompArch.X86_64, n, out _))
                Assert.True(Allow == Eval(p, n), n);
        foreach (var n in new[] { "mount", "umount2", "unshare", "setns", "pivot_root", "keyctl", "add_key",
            "request_key", "bpf", "ptrace",
                     "reboot", "kexec_load", "init_module", "finit_module", "open_by_handle_at", "fsopen", "move_mount",
                     "io_uring_setup",
                     "userfaultfd", "perf_event_open", "settimeofday", "chroot", "swapon", "acct", "iopl", "syslog",
                         "sethostname" })
            Assert.True(Eperm == Eval(p, n), $"{n}: {Bpf.DescribeReturn(Eval(p, n))}");
        Assert.Equal(Enosys, Eval(p, "clone3"));
        Assert.Equal(Enosys, Run(p, Bpf.AuditArchX86_64, 462).Ret); // newer than the tables (mseal on 6.10+)
        Assert.Equal(Enosys, Run(p, Bpf.AuditArchX86_64, 100000).Ret);

        // clone: fork and threads yes, any namespace flag no (also with junk in the high word).
        Assert.Equal(Allow, Eval(p, "clone", SIGCHLD));
        Assert.Equal(Allow, Eval(p, "clone", ThreadFlags));
        Assert.Equal(Allow, Eval(p, "clone", 0xffff_ffff_0000_0000 | SIGCHLD));
        foreach (var f in NamespaceFlags)
        {
            Assert.Equal(Eperm, Eval(p, "clone", f | SIGCHLD));
            Assert.Equal(Eperm, Eval(p, "clone", 0xffff_ffff_0000_0000 | f | ThreadFlags));
        }

        // personality: Linux, UNAME26, LINUX32 and the query only.
        foreach (var ok in new ulong[] { 0, 8, 0x20000, 0x20008, 0xffffffff })
            Assert.Equal(Allow, Eval(p, "personality", ok));
        foreach (var bad in new ulong[] { 0x40000 /* ADDR_NO_RANDOMIZE */, 0x0400000 /* READ_IMPLIES_EXEC */, 0x20,
            0xffff_ffff_ffff_ffff, 0x1_0000_0000 })
            Assert.Equal(Eperm, Eval(p, "personality", bad));

        // The same on i386 and x32, with their own numbers.
        Assert.Equal(Allow, Run(p, SeccompArch.X86, "socketcall").Ret);
        Assert.Equal(Allow, Run(p, SeccompArch.X86, "mmap2").Ret);
        Assert.Equal(Eperm, Run(p, SeccompArch.X86, "mount").Ret);
        Assert.Equal(Eperm, Run(p, SeccompArch.X86, "clone", 0x10000000 | SIGCHLD).Ret);
        Assert.Equal(Allow, Run(p, SeccompArch.X86, "clone", SIGCHLD).Ret);
        Assert.Equal(Allow, Run(p, SeccompArch.X32, "read").Ret);
        Assert.Equal(Eperm, Run(p, SeccompArch.X32, "keyctl").Ret);
        Assert.Equal(Bpf.RetKillProcess, Run(p, 0xC00000B7, 0).Ret);
    }

    [Fact]
    public void CapabilitiesUnlockTheirSyscalls()
    {
        var admin = Default("CAP_SYS_ADMIN");
        foreach (var n in new[] { "mount", "umount2", "unshare", "setns", "sethostname", "pivot_root", "fsopen" })
            Assert.True(Allow == Eval(admin, n), n);
        Assert.Equal(Allow, Eval(admin, "clone", 0x10000000 | SIGCHLD));
        Assert.Equal(Eperm, Eval(admin, "keyctl"));          // never: keyrings are not namespaced
        Assert.Equal(Eperm, Eval(admin, "kexec_load"));
        Assert.Equal(Eperm, Eval(admin, "ptrace"));
        Assert.Equal(Enosys, Eval(admin, "clone3"));

        var others = Default("sys_ptrace", "SYS_TIME", "CAP_SYS_MODULE", "cap_sys_chroot");
        foreach (var n in new[] { "ptrace", "process_vm_readv", "settimeofday", "clock_settime", "init_module",
            "chroot" })
            Assert.True(Allow == Eval(others, n), n);
        Assert.Equal(Eperm, Eval(others, "mount"));
        Assert.Equal(Eperm, Eval(others, "clone", 0x20000000 | SIGCHLD));
    }

    [Fact]
    public void EveryNameIsARealSyscallOrNewerThanTheTables()
    {
        // Names the profile lists for kernels newer than the headers the tables came from.
        var newer = new HashSet<string> { "cachestat", "fchmodat2", "futex_wake", "futex_wait", "futex_requeue" };
        var profile = SeccompProfiles.DefaultProfile(["CAP_SYS_ADMIN"]);
        foreach (var name in profile.Syscalls!.SelectMany(s => s.Names).Distinct())
        {
            var known = Enum.GetValues<SeccompArch>().Any(a => SeccompCompiler.TryGetSyscallNumber(a, name, out _));
            Assert.True(known || newer.Contains(name), $"{name} is in no syscall table: a typo?");
        }
    }

    [Fact]
    public void TheProfileRoundTripsThroughOciJson()
    {
        var profile = SeccompProfiles.DefaultProfile(["CAP_NET_RAW"]);
        var json = JsonSerializer.Serialize(profile, SeccompJson.Default.Seccomp);
        var back = JsonSerializer.Deserialize(json, SeccompJson.Default.Seccomp)!;
        Assert.Equal(SeccompCompiler.Compile(profile).Instructions, SeccompCompiler.Compile(back).Instructions);
        Assert.Contains("\"defaultErrnoRet\": 38", json.Replace("\":38", "\": 38"));
    }
}
