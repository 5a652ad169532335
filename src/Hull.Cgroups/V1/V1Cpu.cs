using Hull.Linux;
using Hull.Oci;

namespace Hull.Cgroups.V1;

/// <summary>cgroup v1 cpu (shares, CFS quota/period/burst, realtime, idle) and cpuacct (usage statistics).</summary>
internal static class V1Cpu
{
    /// <summary>USER_HZ: cpuacct.stat counts in these ticks.</summary>
    const ulong NsPerTick = 10_000_000;

    public static void Apply(CgroupFiles f, string d, Cpu c)
    {
        if (c.Shares is { } shares and > 0)
        {
            f.Write(d, "cpu.shares", shares.ToString());
            var got = f.ReadU64(d, "cpu.shares");
            if (got != 0 && got != shares)
                throw new CgroupException($"{d}/cpu.shares = {shares}: the kernel clamped it to {got} — use a value " +
                    "from 2 to 262144", "cpu.shares", shares.ToString());
        }
        string QuotaHint(int e) => e == Errors.EINVAL
            ? "the quota/period pair exceeds the parent's CPU bandwidth or is out of range (quota ≥ 1000 µs, period " +
                "1000–1000000 µs): lower quota or raise the parent's"
            : CgroupFiles.GenericHint("cpu.cfs_quota_us", e);
        if (c.Period is { } period and > 0 && c.Quota is { } q && q != 0)
        {
            // The kernel checks quota/period as a pair against the parent; one order may fail where the other works.
            if (!f.TryWrite(d, "cpu.cfs_period_us", period.ToString(), out _)
                || !f.TryWrite(d, "cpu.cfs_quota_us", q.ToString(), out _))
            {
                f.Write(d, "cpu.cfs_quota_us", q.ToString(), QuotaHint);
                f.Write(d, "cpu.cfs_period_us", period.ToString(), QuotaHint);
            }
        }
        else
        {
            if (c.Period is { } p and > 0) f.Write(d, "cpu.cfs_period_us", p.ToString(), QuotaHint);
            if (c.Quota is { } q2 && q2 != 0) f.Write(d, "cpu.cfs_quota_us", q2.ToString(), QuotaHint);
        }
        if (c.Burst is { } burst) f.Write(d, "cpu.cfs_burst_us", burst.ToString(), e => e == Errors.EINVAL
            ? "cpu.burst must not exceed the quota (and needs a quota set)"
                : CgroupFiles.GenericHint("cpu.cfs_burst_us", e));
        string RtHint(int e) => e is Errors.EINVAL or Errors.EBUSY
            ? "the parent cgroups do not have that much realtime runtime: give it to each parent's cpu.rt_runtime_us " +
                "first, or remove realtimeRuntime"
            : e == Errors.ENOENT ? "this kernel has no realtime group scheduling (CONFIG_RT_GROUP_SCHED): remove " +
                "realtimeRuntime/realtimePeriod"
            : CgroupFiles.GenericHint("cpu.rt_runtime_us", e);
        if (c.RealtimePeriod is { } rp and > 0) f.Write(d, "cpu.rt_period_us", rp.ToString(), RtHint);
        if (c.RealtimeRuntime is { } rr && rr != 0) f.Write(d, "cpu.rt_runtime_us", rr.ToString(), RtHint);
        if (c.Idle is { } idle) f.Write(d, "cpu.idle", idle.ToString());
    }

    public static void Stats(CgroupFiles f, string d, CgroupStats s)
    {
        var st = f.ReadKeyed(d, "cpu.stat");
        s.Cpu.Throttling.Periods = st.GetValueOrDefault("nr_periods");
        s.Cpu.Throttling.ThrottledPeriods = st.GetValueOrDefault("nr_throttled");
        s.Cpu.Throttling.ThrottledTime = st.GetValueOrDefault("throttled_time");
    }

    public static void AcctStats(CgroupFiles f, string d, CgroupStats s)
    {
        var u = s.Cpu.Usage;
        u.Total = f.ReadU64(d, "cpuacct.usage");
        var per = f.ReadList(d, "cpuacct.usage_percpu");
        u.PerCpu = per.Count > 0 ? per : null;
        var sys = f.ReadList(d, "cpuacct.usage_percpu_sys");
        u.PerCpuKernel = sys.Count > 0 ? sys : null;
        var usr = f.ReadList(d, "cpuacct.usage_percpu_user");
        u.PerCpuUser = usr.Count > 0 ? usr : null;
        var st = f.ReadKeyed(d, "cpuacct.stat");
        u.User = st.GetValueOrDefault("user") * NsPerTick;
        u.Kernel = st.GetValueOrDefault("system") * NsPerTick;
    }
}
