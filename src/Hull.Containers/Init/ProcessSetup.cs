using System.Runtime.InteropServices;
using System.Text;
using Hull.Linux;

namespace Hull.Containers;

/// <summary>
/// The last steps before the container's process runs, on the thread that calls execve (credentials,
/// capabilities, no_new_privs and seccomp are per thread). Order, as runc: rlimits, oom score, personality,
/// LSM labels, umask, cwd, bounding set, user switch (keeping caps), capabilities, no_new_privs, seccomp, exec.
/// </summary>
public static unsafe class ProcessSetup
{
    public const string DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

    /// <summary>Finds args[0] the way execvp does, in the current root; throws a runc-style error if it is not
    /// there.</summary>
    public static string ResolveExecutable(Hull.Oci.Process p)
    {
        var name = p.Args![0];
        if (name.Contains('/'))
        {
            var full = name.StartsWith('/') ? name : Path.Combine(p.Cwd, name);
            CheckExecutable(full, name);
            return full;
        }
        var path = p.Env?.LastOrDefault(e => e.StartsWith("PATH=", StringComparison.Ordinal))?[5..] ?? DefaultPath;
        foreach (var dir in path.Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(dir, name);
            if (Libc.access(candidate, 1 /* X_OK */) == 0 && !Directory.Exists(candidate)) return candidate;
        }
        throw new ContainerException($"exec: \"{name}\": executable file not found in $PATH ({path})") { ExitCode =
            127 };
    }

    static void CheckExecutable(string full, string name)
    {
        if (Libc.access(full, 0) < 0)
            throw new ContainerException($"exec: \"{name}\": " +
                $"{Errors.Describe(Marshal.GetLastPInvokeError())}") { ExitCode = 127 };
        if (Directory.Exists(full))
            throw new ContainerException($"exec: \"{name}\": is a directory") { ExitCode = 126 };
        if (Libc.access(full, 1) < 0)
            throw new ContainerException($"exec: \"{name}\": " +
                $"{Errors.Describe(Marshal.GetLastPInvokeError())}") { ExitCode = 126 };
    }

    /// <summary>Process-wide attributes set by the init itself before the user switch: rlimits, OOM score, scheduling,
    /// cwd.</summary>
    public static void ApplyProcessAttributes(Hull.Oci.Process p, Hull.Oci.Spec? spec)
    {
        foreach (var r in p.Rlimits ?? []) Rlimits.Apply(r);
        if (p.OomScoreAdj is { } oom && !Sys.TryWriteFile("/proc/self/oom_score_adj", oom.ToString(), out var e))
            throw new ContainerException($"setting oomScoreAdj to {oom}: {Errors.Describe(e)}" +
                (e is Errors.EACCES or Errors.EPERM ? " — lowering the OOM score needs CAP_SYS_RESOURCE, which this " +
                    "runtime does not have; use a value ≥ the runtime's own" : ""));
        if (p.Scheduler is { } sched) Scheduling.Apply(sched);
        if (p.IoPriority is { } io) Scheduling.Apply(io);
        if (Libc.chdir(p.Cwd) < 0)
        {
            var ce = Marshal.GetLastPInvokeError();
            if (ce != Errors.ENOENT) throw new LinuxException(ce, $"chdir to cwd {p.Cwd}");
            // runc creates a missing cwd; do the same
            Directory.CreateDirectory(p.Cwd);
            Sys.Check(Libc.chdir(p.Cwd), $"chdir to cwd {p.Cwd}");
        }
    }

    /// <summary>The credentials, capabilities, LSM label, no_new_privs and seccomp of a process, for the spawn
    /// shim.</summary>
    public static ProcessAttributes Attributes(Hull.Oci.Process p, Hull.Oci.Spec? spec, byte[]? seccomp = null,
        uint seccompFlags = 0)
    {
        // (uid_t)-1 tells setresuid/setresgid "leave unchanged": the process would keep the runtime's root.
        if (p.User.Uid == uint.MaxValue || p.User.Gid == uint.MaxValue
            || p.User.AdditionalGids?.Contains(uint.MaxValue) == true)
            throw new ContainerException(
                "process.user: 4294967295 (-1) is not a user or group id: give one from 0 to 4294967294");
        var caps = p.Capabilities ?? new Hull.Oci.Capabilities();
        var a = new ProcessAttributes
        {
            Umask = p.User.Umask is { } u ? (int)u : -1,
            Personality = spec?.Linux?.Personality is { } pers ? (pers.Domain == "LINUX32" ? 0x0008 : 0) : -1,
            Bounding = Capabilities.Mask(caps.Bounding), Effective = Capabilities.Mask(caps.Effective),
            Permitted = Capabilities.Mask(caps.Permitted), Inheritable = Capabilities.Mask(caps.Inheritable),
            // The kernel raises an ambient capability only if it is inheritable and permitted: runc skips the rest.
            Ambient = Capabilities.Mask(caps.Ambient) & Capabilities.Mask(caps.Inheritable)
                & Capabilities.Mask(caps.Permitted),
            LastCap = Capabilities.LastCap,
            Uid = p.User.Uid, Gid = p.User.Gid, Groups = p.User.AdditionalGids ?? [],
            NoNewPrivileges = p.NoNewPrivileges, SeccompProgram = seccomp, SeccompFlags = seccompFlags,
        };
        if (!string.IsNullOrEmpty(p.ApparmorProfile) && Directory.Exists("/sys/kernel/security/apparmor"))
            a.Files.Add((File.Exists("/proc/thread-self/attr/apparmor/exec") ? "/proc/thread-self/attr/apparmor/exec"
                : "/proc/thread-self/attr/exec", "exec " + p.ApparmorProfile));
        if (!string.IsNullOrEmpty(p.SelinuxLabel) && File.Exists("/sys/fs/selinux/enforce"))
            a.Files.Add(("/proc/thread-self/attr/exec", p.SelinuxLabel));
        return a;
    }

    /// <summary>The init's last step: user switch, capabilities, no_new_privs, seccomp, then execve. Never
    /// returns.</summary>
    public static void SwitchUserAndExec(Hull.Oci.Process p, Hull.Oci.Spec? spec, string executable, int firstPrivateFd,
        byte[]? seccomp = null, uint seccompFlags = 0)
    {
        // Every fd from firstPrivateFd up is closed by the exec (ours, and any the caller leaked to us).
        Libc.syscall(436 /* close_range */, firstPrivateFd, uint.MaxValue, 4 /* CLOSE_RANGE_CLOEXEC */, 0, 0, 0);
        try
        {
            Spawner.ExecInPlace(new SpawnRequest { Path = executable, Argv = p.Args!, Env = BuildEnv(p),
                Attributes = Attributes(p, spec, seccomp, seccompFlags) });
        }
        catch (SpawnException e)
        {
            throw new ContainerException(e.Stage == SpawnStage.Exec ? $"exec {executable}: {Errors.Describe(e.Errno)}"
                : e.Message)
                { ExitCode = e.Errno == Errors.ENOENT ? 127 : 126 };
        }
    }

    public static List<string> BuildEnv(Hull.Oci.Process p)
    {
        var env = new List<string>(p.Env ?? []);
        if (!env.Any(e => e.StartsWith("HOME=", StringComparison.Ordinal)))
            env.Add("HOME=" + HomeOf(p.User.Uid));
        if (!env.Any(e => e.StartsWith("PATH=", StringComparison.Ordinal)))
            env.Add("PATH=" + DefaultPath);
        if (p.Terminal && !env.Any(e => e.StartsWith("TERM=", StringComparison.Ordinal)))
            env.Add("TERM=xterm");
        return env;
    }

    static string HomeOf(uint uid)
    {
        try
        {
            foreach (var line in File.ReadLines("/etc/passwd"))
            {
                var f = line.Split(':');
                if (f.Length >= 6 && uint.TryParse(f[2], out var u) && u == uid) return f[5];
            }
        }
        catch (IOException) { }
        return "/";
    }
}

/// <summary>sched_setattr(2) and ioprio_set(2) for process.scheduler and process.ioPriority.</summary>
public static unsafe class Scheduling
{
    static readonly string[] Policies = ["SCHED_OTHER", "SCHED_FIFO", "SCHED_RR", "SCHED_BATCH", "SCHED_ISO",
        "SCHED_IDLE", "SCHED_DEADLINE"];

    [StructLayout(LayoutKind.Sequential)]
    struct SchedAttr { public uint Size, Policy; public ulong Flags; public int Nice; public uint Priority; public ulong
        Runtime, Deadline, Period; }

    public static void Apply(Hull.Oci.Scheduler s)
    {
        var policy = Array.IndexOf(Policies, s.Policy);
        if (policy < 0) throw new ContainerException(
            $"process.scheduler.policy \"{s.Policy}\" is not valid (valid: {string.Join(", ", Policies)})");
        ulong flags = 0;
        foreach (var f in s.Flags ?? [])
            flags |= f switch
            {
                "SCHED_FLAG_RESET_ON_FORK" => 1UL, "SCHED_FLAG_RECLAIM" => 2UL, "SCHED_FLAG_DL_OVERRUN" => 4UL,
                "SCHED_FLAG_KEEP_POLICY" => 8UL, "SCHED_FLAG_KEEP_PARAMS" => 16UL, "SCHED_FLAG_UTIL_CLAMP_MIN" => 32UL,
                "SCHED_FLAG_UTIL_CLAMP_MAX" => 64UL,
                _ => throw new ContainerException($"process.scheduler.flags: unknown flag \"{f}\""),
            };
        var a = new SchedAttr
        {
            Size = (uint)sizeof(SchedAttr), Policy = (uint)policy, Flags = flags, Nice = s.Nice ?? 0,
            Priority = (uint)(s.Priority ?? 0),
            Runtime = s.Runtime ?? 0, Deadline = s.Deadline ?? 0, Period = s.Period ?? 0,
        };
        if (Libc.syscall(314 /* sched_setattr */, 0, (long)&a, 0, 0, 0, 0) < 0)
            throw new ContainerException($"sched_setattr {s.Policy}: {Errors.Describe(Marshal.GetLastPInvokeError())}");
    }

    public static void Apply(Hull.Oci.IoPriority io)
    {
        var cls = io.Class switch
        {
            "IOPRIO_CLASS_RT" => 1, "IOPRIO_CLASS_BE" => 2, "IOPRIO_CLASS_IDLE" => 3,
            _ => throw new ContainerException($"process.ioPriority.class \"{io.Class}\" is not valid (valid: " +
                "IOPRIO_CLASS_RT, IOPRIO_CLASS_BE, IOPRIO_CLASS_IDLE)"),
        };
        if (io.Priority is < 0 or > 7) throw new ContainerException(
            $"process.ioPriority.priority {io.Priority} is out of range 0-7");
        if (Libc.syscall(251 /* ioprio_set */, 1 /* IOPRIO_WHO_PROCESS */, 0, (cls << 13) | io.Priority, 0, 0, 0) < 0)
            throw new ContainerException($"ioprio_set {io.Class}/{io.Priority}: " +
                $"{Errors.Describe(Marshal.GetLastPInvokeError())}");
    }
}
