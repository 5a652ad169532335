using Hull.Linux;

namespace Hull.Cgroups.V1;

/// <summary>cgroup v1 freezer: freezer.state FROZEN / THAWED. Freezing can stall on tasks that are in the middle of
/// something (vfork, D state): the write is repeated and the wait is bounded; on timeout the cgroup is thawed
/// again.</summary>
internal static class V1Freezer
{
    const int MaxWaitMs = 5000;

    public static void Freeze(CgroupFiles f, string d)
    {
        var start = Environment.TickCount64;
        for (var i = 0; ; i++)
        {
            if (i % 50 == 0) f.Write(d, "freezer.state", "FROZEN");
            if (State(f, d) == "FROZEN") return;
            if (Environment.TickCount64 - start > MaxWaitMs)
            {
                f.TryWrite(d, "freezer.state", "THAWED", out _);
                throw new CgroupException($"{d}/freezer.state stayed FREEZING for {MaxWaitMs / 1000} s: a process " +
                    "cannot be frozen (uninterruptible sleep or vfork); the cgroup was thawed again — retry later",
                    "freezer.state", "FROZEN", Errors.EBUSY);
            }
            Thread.Sleep(i < 10 ? 0 : 1);
        }
    }

    public static void Thaw(CgroupFiles f, string d)
    {
        var start = Environment.TickCount64;
        for (var i = 0; ; i++)
        {
            if (i % 50 == 0) f.Write(d, "freezer.state", "THAWED");
            if (State(f, d) == "THAWED") return;
            if (Environment.TickCount64 - start > MaxWaitMs)
                throw new CgroupException($"{d}/freezer.state does not become THAWED: a parent cgroup is frozen (see " +
                    "freezer.parent_freezing); thaw it first", "freezer.state", "THAWED", Errors.EBUSY);
            Thread.Sleep(i < 10 ? 0 : 1);
        }
    }

    public static bool IsFrozen(CgroupFiles f, string d) => State(f, d) is "FROZEN" or "FREEZING";

    static string State(CgroupFiles f, string d) => f.ReadOrNull(d, "freezer.state")?.Trim() ?? "";
}
