using Hull.Linux;
using Hull.Oci;

namespace Hull.Cgroups.V2;

/// <summary>cgroup v2 cpu: cpu.weight (from OCI shares), cpu.max "quota period", cpu.max.burst, cpu.idle.</summary>
internal static class V2Cpu
{
    /// <summary>runc's mapping of v1 shares [2, 262144] onto v2 weight [1, 10000] (0 = unset).</summary>
    public static ulong SharesToWeight(ulong shares) =>
        shares == 0 ? 0 : 1 + ((Math.Clamp(shares, 2, 262144) - 2) * 9999) / 262142;

    public static void Apply(CgroupFiles f, string d, Cpu c)
    {
        string Hint(string file, int e) => e == Errors.ENOENT ? V2Tree.MissingHint(d, file) : e == Errors.EINVAL
            && file == "cpu.max"
            ? "the quota/period pair is out of range (quota ≥ 1000 µs, period 1000–1000000 µs) or exceeds what the " +
                "parent allows"
            : CgroupFiles.GenericHint(file, e);
        if (c.Shares is { } shares and > 0) f.Write(d, "cpu.weight", SharesToWeight(shares).ToString(),
            e => Hint("cpu.weight", e));
        var quotaGiven = c.Quota is { } qg && qg != 0;   // 0 = not set, as in runc
        if (quotaGiven || c.Period is { } and > 0)
        {
            // Keep what is not given (an update may change only the period).
            var cur = (f.ReadOrNull(d, "cpu.max") ?? "max 100000").Split(' ', StringSplitOptions.RemoveEmptyEntries);
            var quota = quotaGiven ? (c.Quota < 0 ? "max" : c.Quota!.Value.ToString()) : cur.Length > 0 ? cur[0]
                : "max";
            var period = c.Period is { } p and > 0 ? p.ToString() : cur.Length > 1 ? cur[1] : "100000";
            f.Write(d, "cpu.max", $"{quota} {period}", e => Hint("cpu.max", e));
        }
        if (c.Burst is { } burst) f.Write(d, "cpu.max.burst", burst.ToString(), e => Hint("cpu.max.burst", e));
        if (c.RealtimeRuntime is { } rr && rr != 0 || c.RealtimePeriod is { } rp && rp != 0)
            throw new CgroupException("linux.resources.cpu.realtimeRuntime/realtimePeriod cannot be applied: cgroup " +
                "v2 has no realtime group scheduling; remove them");
        if (c.Idle is { } idle) f.Write(d, "cpu.idle", idle.ToString(), e => Hint("cpu.idle", e));
    }

    public static void Stats(CgroupFiles f, string d, CgroupStats s)
    {
        var st = f.ReadKeyed(d, "cpu.stat");
        s.Cpu.Usage.Total = st.GetValueOrDefault("usage_usec") * 1000;
        s.Cpu.Usage.User = st.GetValueOrDefault("user_usec") * 1000;
        s.Cpu.Usage.Kernel = st.GetValueOrDefault("system_usec") * 1000;
        s.Cpu.Throttling.Periods = st.GetValueOrDefault("nr_periods");
        s.Cpu.Throttling.ThrottledPeriods = st.GetValueOrDefault("nr_throttled");
        s.Cpu.Throttling.ThrottledTime = st.GetValueOrDefault("throttled_usec") * 1000;
    }
}
