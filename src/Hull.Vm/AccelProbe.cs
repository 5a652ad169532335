using System.Text;
using System.Text.Json;
using Hull.Linux;

namespace Hull.Vm;

/// <summary>The probe's decision, cached per host.</summary>
public sealed class AccelVerdict
{
    public Accel Accel { get; set; }
    public string Reason { get; set; } = "";
    /// <summary>What the verdict is valid for: kernel release and /dev/kvm identity.</summary>
    public string HostKey { get; set; } = "";
}

/// <summary>
/// Decides between KVM and TCG by running a tiny guest under KVM: a multiboot image that executes, in ring 0,
/// instructions a real kernel needs (int3 through an IDT, popcnt, xsetbv/xsave/xrstor, fninit/fwait, cmpxchg8b),
/// then prints a marker on the serial port and exits through isa-debug-exit. Some /dev/kvm providers (software
/// nesting that emulates guest kernel code) cannot run these; the probe sees that instead of trusting a host name.
/// </summary>
public static class AccelProbe
{
    const string Marker = "HULL-PROBE-OK";
    const int SuccessExit = 33; // isa-debug-exit: (0x10 << 1) | 1

    /// <summary>The CPU model used with KVM (MSR 0x10a cannot be set by some providers).</summary>
    public const string KvmCpu = "host,-arch-capabilities";

    /// <summary>
    /// The probe guest (205 bytes): a multiboot header with load addresses (flat image at 1 MiB), then 32-bit code:
    /// cli; patch the IDT gate's selector with CS; lidt; int3 (handler: iret); popcnt 0x12345678 == 13; set
    /// CR4.OSFXSR|OSXSAVE; xsetbv XCR0=3; fninit; fwait; xsave/xrstor at 2 MiB; cmpxchg8b; print the marker to 0x3f8;
    /// outb 0x10 to port 0xf4; hlt.
    /// </summary>
    static readonly byte[] ProbeImage =
    [
        0x02, 0xb0, 0xad, 0x1b, 0x00, 0x00, 0x01, 0x00, 0xfe, 0x4f, 0x51, 0xe4,
        0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x20, 0x00, 0x10, 0x00, 0xfa, 0x66, 0x8c, 0xc8,
        0x66, 0xa3, 0xb2, 0x00, 0x10, 0x00, 0x0f, 0x01, 0x1d, 0xb8, 0x00, 0x10,
        0x00, 0xcc, 0xbb, 0x78, 0x56, 0x34, 0x12, 0xf3, 0x0f, 0xb8, 0xc3, 0x83,
        0xf8, 0x0d, 0x75, 0x53, 0x0f, 0x20, 0xe0, 0x0d, 0x00, 0x02, 0x04, 0x00,
        0x0f, 0x22, 0xe0, 0x31, 0xc9, 0xb8, 0x03, 0x00, 0x00, 0x00, 0x31, 0xd2,
        0x0f, 0x01, 0xd1, 0xdb, 0xe3, 0x9b, 0xb8, 0x03, 0x00, 0x00, 0x00, 0x31,
        0xd2, 0xbf, 0x00, 0x00, 0x20, 0x00, 0x0f, 0xae, 0x27, 0x0f, 0xae, 0x2f,
        0x31, 0xc0, 0x31, 0xd2, 0x31, 0xdb, 0x31, 0xc9, 0x0f, 0xc7, 0x0d, 0x00,
        0x10, 0x20, 0x00, 0xbe, 0xbe, 0x00, 0x10, 0x00, 0x66, 0xba, 0xf8, 0x03,
        0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0x66, 0xba, 0xf4, 0x00,
        0xb0, 0x10, 0xee, 0xf4, 0xeb, 0xfd, 0xcf, 0x90, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x96, 0x00, 0x10, 0x00,
        0x00, 0x8e, 0x10, 0x00, 0x1f, 0x00, 0x98, 0x00, 0x10, 0x00, 0x48, 0x55,
        0x4c, 0x4c, 0x2d, 0x50, 0x52, 0x4f, 0x42, 0x45, 0x2d, 0x4f, 0x4b, 0x0a,
        0x00,
    ];

    static readonly object s_lock = new();
    static readonly Dictionary<string, AccelVerdict> s_memo = new(StringComparer.Ordinal);

    /// <summary>Where Hull prints the one-line warning when it falls back to TCG (stderr by default).</summary>
    public static Action<string> Warn { get; set; } = m => Console.Error.WriteLine("hull: " + m);

    /// <summary>Resolves Auto to Kvm or Tcg (cached per host in <paramref name="cacheDir"/>); Kvm and Tcg pass
    /// through.</summary>
    public static AccelVerdict Resolve(Accel requested, string cacheDir, string qemu)
    {
        if (requested == Accel.Tcg) return new AccelVerdict { Accel = Accel.Tcg, Reason = "requested" };
        if (requested == Accel.Kvm)
        {
            if (!File.Exists("/dev/kvm"))
                throw new VmException("--accel kvm was requested but /dev/kvm does not exist: load the kvm module or " +
                    "use --accel tcg");
            return new AccelVerdict { Accel = Accel.Kvm, Reason = "requested" };
        }
        lock (s_lock)
        {
            var key = HostKey();
            var cache = Path.GetFullPath(Path.Combine(cacheDir, "accel.json"));
            if (s_memo.TryGetValue(cache, out var m) && m.HostKey == key && File.Exists(cache)) return m;
            try
            {
                if (File.Exists(cache))
                {
                    var cached = JsonSerializer.Deserialize(File.ReadAllText(cache), VmJson.Default.AccelVerdict);
                    if (cached is not null && cached.HostKey == key) return s_memo[cache] = cached;
                }
            }
            catch (JsonException) { }
            var v = Probe(qemu, cacheDir);
            v.HostKey = key;
            if (v.Accel == Accel.Tcg) Warn($"using TCG (software emulation) instead of KVM: {v.Reason}");
            Directory.CreateDirectory(cacheDir);
            var tmp = cache + ".tmp";
            File.WriteAllText(tmp, JsonSerializer.Serialize(v, VmJson.Default.AccelVerdict));
            File.Move(tmp, cache, overwrite: true);
            return s_memo[cache] = v;
        }
    }

    /// <summary>The verdict's validity key: kernel release, /dev/kvm's device number and change time, and the kvm
    /// modules loaded.</summary>
    public static string HostKey()
    {
        var release = File.Exists("/proc/sys/kernel/osrelease") ? File.ReadAllText("/proc/sys/kernel/osrelease").Trim()
            : "?";
        var kvm = "none";
        if (File.Exists("/dev/kvm"))
        {
            var fi = new FileInfo("/dev/kvm");
            kvm = fi.LastWriteTimeUtc.Ticks.ToString(System.Globalization.CultureInfo.InvariantCulture);
        }
        var mods = "";
        try
        {
            mods = string.Join(",", File.ReadLines("/proc/modules").Select(l => l.Split(' ')[0]).Where(m =>
                m.StartsWith("kvm", StringComparison.Ordinal)).Order());
        }
        catch (IOException) { }
        return $"{release}|{kvm}|{mods}";
    }

    /// <summary>Runs the probe guest under KVM (no cache).</summary>
    public static AccelVerdict Probe(string qemu, string workDir, TimeSpan? timeout = null)
    {
        if (!File.Exists("/dev/kvm")) return new AccelVerdict { Accel = Accel.Tcg, Reason = "/dev/kvm does not exist" };
        try { using var f = File.Open("/dev/kvm", FileMode.Open, FileAccess.ReadWrite); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return new AccelVerdict { Accel = Accel.Tcg, Reason = $"/dev/kvm cannot be opened ({e.Message})" };
        }
        var (ok, detail) = RunProbe(qemu, workDir, "kvm", KvmCpu, timeout ?? TimeSpan.FromSeconds(15));
        return ok
            ? new AccelVerdict { Accel = Accel.Kvm, Reason = "KVM ran the probe guest's ring-0 instructions" }
            : new AccelVerdict { Accel = Accel.Tcg, Reason = $"KVM cannot run kernel-mode guest code here ({detail})" };
    }

    /// <summary>Runs the probe guest with the given accelerator; true when it printed its marker and exited
    /// cleanly.</summary>
    public static (bool Ok, string Detail) RunProbe(string qemu, string workDir, string accel, string cpu,
        TimeSpan timeout)
    {
        Directory.CreateDirectory(workDir);
        var image = Path.Combine(workDir, $"accel-probe-{Environment.ProcessId}-{Guid.NewGuid():N}.bin");
        File.WriteAllBytes(image, ProbeImage);
        try
        {
            var r = HostProgram.ExecAsync(qemu,
            [
                "-accel", accel, "-cpu", cpu, "-M", "pc", "-m", "32", "-nodefaults", "-no-user-config", "-display",
                "none",
                "-no-reboot", "-kernel", image, "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
            ], new HostProgramOptions
            {
                Timeout = timeout,
                // KVM failures often leave QEMU alive and paused after dumping registers: stop early.
                StopOnStderr = l => l.Contains("KVM internal error", StringComparison.Ordinal)
                    || l.Contains("emulation failure", StringComparison.OrdinalIgnoreCase),
                Error = e => new VmException(e.Message, e),
            }, CancellationToken.None).GetAwaiter().GetResult();
            if (!r.TimedOut && !r.Stopped && r.ExitCode == SuccessExit
                && r.Stdout.Contains(Marker, StringComparison.Ordinal))
                return (true, "ok");
            var first = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .FirstOrDefault(l => !l.StartsWith("qemu-system-x86_64: terminating", StringComparison.Ordinal));
            var why = first is not null && (first.Contains("error", StringComparison.OrdinalIgnoreCase)
                || first.Contains("fail", StringComparison.OrdinalIgnoreCase))
                ? first.Trim()
                : r.TimedOut ? $"the probe guest did not finish in {timeout.TotalSeconds:0} s"
                    : $"the probe guest stopped (exit {r.ExitCode})";
            return (false, why);
        }
        finally
        {
            try { File.Delete(image); } catch (IOException) { }
        }
    }
}
