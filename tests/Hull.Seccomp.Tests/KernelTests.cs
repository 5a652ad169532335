using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using Hull.Linux;
using State = Hull.Oci.State;
using SeccompSyscall = Hull.Oci.SeccompSyscall;
using Process = System.Diagnostics.Process;
using Hull.TestSupport;
using Xunit;
using static Hull.Seccomp.Tests.CompilerTests;
using OciSeccomp = Hull.Oci.Seccomp;

namespace Hull.Seccomp.Tests;

/// <summary>
/// The compiled programs in the real kernel: Hull.Seccomp.Probe loads a profile into itself (no_new_privs, TSYNC) and
/// execs a command (or makes one raw syscall); the tests look at what the command could do.
/// </summary>
public partial class KernelTests
{
    const int SIGSYS = 31;

    static string ProbePath()
    {
        var p = Path.Combine(AppContext.BaseDirectory, "Hull.Seccomp.Probe");
        if (!File.Exists(p)) throw new InvalidOperationException(
            $"{p} is missing: the test project builds it (ProjectReference)");
        return p;
    }

    static void RequireSeccomp()
    {
        Requires.File("/proc/sys/kernel/seccomp/actions_avail",
            "a kernel with seccomp filters (CONFIG_SECCOMP_FILTER)");
    }

    static Process StartProbe(string workDir, params string[] args)
    {
        var psi = new ProcessStartInfo(ProbePath())
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = workDir, // a SIGSYS core file, if the host writes one, lands in the temp dir
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        return Process.Start(psi) ?? throw new InvalidOperationException("cannot start the probe");
    }

    static (int Exit, string Out, string Err) RunProbe(string workDir, params string[] args)
    {
        using var p = StartProbe(workDir, args);
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(120_000))
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
            throw new InvalidOperationException($"the probe did not finish: {string.Join(' ', args)}");
        }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    static string WriteProfile(TempDir dir, OciSeccomp profile)
    {
        var path = Path.Combine(dir.Path, "seccomp.json");
        File.WriteAllText(path, JsonSerializer.Serialize(profile, SeccompJson.Default.Seccomp));
        return path;
    }

    static OciSeccomp AllowBut(params SeccompSyscall[] rules) => Profile("SCMP_ACT_ALLOW", rules);

    [SkippableFact]
    public void ErrnoMakesMkdirFailWithOperationNotPermitted()
    {
        Requires.Root();
        RequireSeccomp();
        using var dir = new TempDir("hull-seccomp");
        var target = Path.Combine(dir.Path, "made");
        // A name this kernel's tables do not know is skipped, as runc does.
        var profile = WriteProfile(dir, AllowBut(
            Rule("SCMP_ACT_ERRNO", ["mkdir", "no_such_syscall_anywhere", "mkdirat"])));
        var (exit, _, err) = RunProbe(dir.Path, profile, "--", "/bin/mkdir", target);
        Assert.Equal(1, exit);
        Assert.Contains("Operation not permitted", err);
        Assert.False(Directory.Exists(target));

        // The same profile lets everything else through.
        var (exit2, out2, err2) = RunProbe(dir.Path, profile, "--", "/bin/sh", "-c",
            "echo hello > " + Path.Combine(dir.Path, "f") + " && cat " + Path.Combine(dir.Path, "f"));
        Assert.True(exit2 == 0, err2);
        Assert.Equal("hello\n", out2);
    }

    [SkippableFact]
    public void ErrnoRetChoosesTheErrno()
    {
        Requires.Root();
        RequireSeccomp();
        using var dir = new TempDir("hull-seccomp");
        var target = Path.Combine(dir.Path, "made");
        var profile = WriteProfile(dir, AllowBut(Rule("SCMP_ACT_ERRNO", ["mkdir", "mkdirat"], 30 /* EROFS */)));
        var (exit, _, err) = RunProbe(dir.Path, profile, "--", "/bin/mkdir", target);
        Assert.Equal(1, exit);
        Assert.Contains("Read-only file system", err);
        Assert.False(Directory.Exists(target));
    }

    [SkippableFact]
    public void MaskedEqOnOpenFlagsDeniesCreatingButNotReading()
    {
        Requires.Root();
        RequireSeccomp();
        var busybox = "/bin/busybox";
        Requires.File(busybox, "busybox (busybox-static)");
        using var dir = new TempDir("hull-seccomp");
        var existing = Path.Combine(dir.Path, "existing");
        File.WriteAllText(existing, "data\n");
        var created = Path.Combine(dir.Path, "created");
        const ulong O_CREAT = 0x40;
        var profile = WriteProfile(dir, AllowBut(
            Rule("SCMP_ACT_ERRNO", ["open"], 13 /* EACCES */, Arg(1, "SCMP_CMP_MASKED_EQ", O_CREAT, O_CREAT)),
            Rule("SCMP_ACT_ERRNO", ["openat"], 13, Arg(2, "SCMP_CMP_MASKED_EQ", O_CREAT, O_CREAT))));

        var (exit, _, err) = RunProbe(dir.Path, profile, "--", busybox, "touch", created);
        Assert.NotEqual(0, exit);
        Assert.Contains("Permission denied", err);
        Assert.False(File.Exists(created));

        var (exit2, out2, err2) = RunProbe(dir.Path, profile, "--", busybox, "cat", existing);
        Assert.True(exit2 == 0, err2);
        Assert.Equal("data\n", out2);
    }

    [SkippableFact]
    public void ArgumentFilterOnPersonality()
    {
        Requires.Root();
        RequireSeccomp();
        using var dir = new TempDir("hull-seccomp");
        var profile = WriteProfile(dir, AllowBut(
            Rule("SCMP_ACT_ERRNO", ["personality"], 22,
                Arg(0, "SCMP_CMP_MASKED_EQ", 0x40000 /* ADDR_NO_RANDOMIZE */, 0x40000))));
        var (exit, stdout, err) = RunProbe(dir.Path, profile, "--call", "personality", "0x40000");
        Assert.True(exit == 0, err);
        Assert.Equal("result=-1 errno=22", stdout.Trim());
        (exit, stdout, err) = RunProbe(dir.Path, profile, "--call", "personality", "0");
        Assert.True(exit == 0, err);
        Assert.Matches("^result=[0-9]+ errno=0$", stdout.Trim());
    }

    [SkippableTheory]
    [InlineData("SCMP_ACT_KILL_PROCESS")]
    [InlineData("SCMP_ACT_KILL")]
    [InlineData("SCMP_ACT_TRAP")]
    public void KillAndTrapEndTheProcessWithSigsys(string action)
    {
        Requires.Root();
        RequireSeccomp();
        using var dir = new TempDir("hull-seccomp");
        var target = Path.Combine(dir.Path, "made");
        var profile = WriteProfile(dir, AllowBut(Rule(action, ["mkdir", "mkdirat"])));
        var (exit, _, _) = RunProbe(dir.Path, profile, "--", "/bin/mkdir", target);
        Assert.Equal(128 + SIGSYS, exit);
        Assert.False(Directory.Exists(target));
    }

    [SkippableFact]
    public void LogAllows()
    {
        Requires.Root();
        RequireSeccomp();
        using var dir = new TempDir("hull-seccomp");
        var target = Path.Combine(dir.Path, "made");
        var profile = WriteProfile(dir, AllowBut(Rule("SCMP_ACT_LOG", ["mkdir", "mkdirat"])));
        var (exit, _, err) = RunProbe(dir.Path, profile, "--", "/bin/mkdir", target);
        Assert.True(exit == 0, err);
        Assert.True(Directory.Exists(target));
    }

    [SkippableFact]
    public void DefaultProfileRunsAShellAndDeniesNamespacesMountsAndKeys()
    {
        Requires.Root();
        RequireSeccomp();
        var busybox = "/bin/busybox";
        Requires.File(busybox, "busybox (busybox-static)");
        using var dir = new TempDir("hull-seccomp");

        var (exit, stdout, err) = RunProbe(dir.Path, "--default", "", "--", busybox, "sh", "-c", "echo ok");
        Assert.True(exit == 0, err);
        Assert.Equal("ok\n", stdout);
        // A dynamically linked glibc program too (ld.so, locale, fork+exec from the shell).
        (exit, stdout, err) = RunProbe(dir.Path, "--default", "", "--", "/bin/sh", "-c", "ls / > /dev/null && echo ok");
        Assert.True(exit == 0, err);
        Assert.Equal("ok\n", stdout);

        (exit, _, err) = RunProbe(dir.Path, "--default", "", "--", busybox, "unshare", "-U", "true");
        Assert.NotEqual(0, exit);
        Assert.Contains("Operation not permitted", err);

        var mnt = Path.Combine(dir.Path, "mnt");
        Directory.CreateDirectory(mnt);
        try
        {
            (exit, _, err) = RunProbe(dir.Path, "--default", "CAP_CHOWN", "--", busybox, "mount", "-t", "tmpfs", "none",
                mnt);
            Assert.NotEqual(0, exit);
            Assert.DoesNotContain(mnt, File.ReadAllText("/proc/self/mountinfo"));
        }
        finally
        {
            if (File.ReadAllText("/proc/self/mountinfo").Contains(mnt)) Libc.umount2(mnt, MS.MNT_DETACH);
        }

        foreach (var call in new[] { "add_key", "keyctl", "request_key" })
        {
            (exit, stdout, err) = RunProbe(dir.Path, "--default", "", "--call", call);
            Assert.True(exit == 0, err);
            Assert.Equal("result=-1 errno=1", stdout.Trim());
        }
        (exit, stdout, _) = RunProbe(dir.Path, "--default", "", "--call", "clone3", "0", "0");
        Assert.Equal("result=-1 errno=38", stdout.Trim());
        (exit, stdout, _) = RunProbe(dir.Path, "--default", "", "--call", "personality", "0x40000");
        Assert.Equal("result=-1 errno=1", stdout.Trim());

        // With CAP_SYS_ADMIN the namespace calls reach the kernel (which allows them: we are root).
        (exit, _, err) = RunProbe(dir.Path, "--default", "CAP_SYS_ADMIN", "--", busybox, "unshare", "-U", "true");
        Assert.True(exit == 0, err);
    }

    [SkippableFact]
    public void NotifyHandsTheListenerFdToTheAgent()
    {
        Requires.Root();
        RequireSeccomp();
        using var dir = new TempDir("hull-seccomp");
        var sockPath = Path.Combine(dir.Path, "agent.sock");
        var target = Path.Combine(dir.Path, "made");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(sockPath));
        listener.Listen(1);

        var profile = AllowBut(Rule("SCMP_ACT_NOTIFY", ["mkdir", "mkdirat"]));
        profile.ListenerPath = sockPath;
        profile.ListenerMetadata = "MKDIR=deny";
        var profilePath = WriteProfile(dir, profile);

        using var probe = StartProbe(dir.Path, profilePath, "--", "/bin/mkdir", target);
        var stderr = probe.StandardError.ReadToEndAsync();
        try
        {
            Assert.True(listener.Poll(60_000_000, SelectMode.SelectRead), "the probe never connected to the listener");
            using var conn = listener.Accept();
            var (json, fd) = ReceiveWithFd(conn);
            Assert.NotNull(fd);
            using var notifyFd = fd;

            var state = JsonSerializer.Deserialize(json, SeccompJson.Default.ContainerProcessState)!;
            Assert.Equal(["seccompFd"], state.Fds);
            Assert.Equal(probe.Id, state.Pid);
            Assert.Equal("MKDIR=deny", state.Metadata);
            Assert.Equal("probe", state.State.Id);
            Assert.Equal(probe.Id, state.State.Pid);

            Assert.True(PollIn(notifyFd, 60_000), "no notification arrived");
            var n = SeccompNotify.Receive(notifyFd);
            Assert.Equal(probe.Id, n.Pid);
            Assert.Equal(Bpf.AuditArchX86_64, n.Arch);
            Assert.Contains(n.Nr, new[] { Nr(SeccompArch.X86_64, "mkdir"), Nr(SeccompArch.X86_64, "mkdirat") });
            Assert.True(SeccompNotify.IsValid(notifyFd, n.Id));
            SeccompNotify.Respond(notifyFd, n.Id, 0, 30 /* EROFS */);

            Assert.True(probe.WaitForExit(60_000));
            Assert.Equal(1, probe.ExitCode);
            Assert.Contains("Read-only file system", stderr.Result);
            Assert.False(Directory.Exists(target));
        }
        finally
        {
            if (!probe.HasExited) { probe.Kill(entireProcessTree: true); probe.WaitForExit(); }
        }
    }

    [Fact]
    public void SendReportsAnAbsentListener()
    {
        var (r, w) = Sys.Pipe();
        using (r)
        using (w)
        {
            var state = SeccompListener.CreateState(new State { Id = "c1", Status = "creating", Pid = 1 }, 1, null);
            var e = Assert.Throws<LinuxException>(() =>
                SeccompListener.Send("/nonexistent-hull-dir/agent.sock", w, state));
            Assert.Equal(Errors.ENOENT, e.Errno);
            Assert.Contains("seccomp listener /nonexistent-hull-dir/agent.sock", e.Message);
            var tooLong = "/" + new string('x', 120);
            Assert.Contains("at most 107", Assert.Throws<SeccompException>(() =>
                SeccompListener.Send(tooLong, w, state)).Message);
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    struct PollFd { public int Fd; public short Events; public short Revents; }

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial int poll(PollFd* fds, nuint n, int timeoutMs);

    static unsafe bool PollIn(SafeFd fd, int timeoutMs)
    {
        var p = new PollFd { Fd = fd.Fd, Events = 1 /* POLLIN */ };
        return poll(&p, 1, timeoutMs) == 1 && (p.Revents & 1) != 0;
    }

    /// <summary>Reads the whole message (the sender closes after one state) and the fd passed with
    /// SCM_RIGHTS.</summary>
    static unsafe (byte[] Data, SafeFd? Fd) ReceiveWithFd(Socket conn)
    {
        var data = new List<byte>();
        SafeFd? received = null;
        var buf = new byte[4096];
        byte* control = stackalloc byte[64];
        var sock = (int)conn.Handle;
        while (true)
        {
            Assert.True(conn.Poll(60_000_000, SelectMode.SelectRead), "the state never arrived");
            nint r;
            int ctrlLen;
            fixed (byte* b = buf)
            {
                var iov = new IoVec { Base = b, Len = buf.Length };
                var msg = new MsgHdr { Iov = &iov, IovLen = 1, Control = control, ControlLen = 64 };
                r = Libc.recvmsg(sock, &msg, 0x40000000 /* MSG_CMSG_CLOEXEC */);
                ctrlLen = (int)msg.ControlLen;
            }
            if (r < 0)
            {
                var e = Marshal.GetLastPInvokeError();
                if (e is Errors.EAGAIN or Errors.EINTR) continue;
                throw new LinuxException(e, "recvmsg");
            }
            if (ctrlLen >= 20 && *(int*)(control + 8) == 1 && *(int*)(control + 12) == 1)
                received = new SafeFd(*(int*)(control + 16));
            if (r == 0) break;
            data.AddRange(buf.AsSpan(0, (int)r).ToArray());
        }
        return (data.ToArray(), received);
    }
}
