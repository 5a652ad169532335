using Hull.Linux;

namespace Hull.Cgroups.V2;

/// <summary>cgroup v2 freezer: cgroup.freeze 1/0, done when cgroup.events says "frozen 1"/"frozen 0".</summary>
internal static class V2Freezer
{
    const int MaxWaitMs = 5000;

    public static void Freeze(CgroupFiles f, string d)
    {
        f.Write(d, "cgroup.freeze", "1", e => e == Errors.ENOENT
            ? "this kernel has no cgroup.freeze (cgroup v2 freezer needs Linux 5.2)"
            : CgroupFiles.GenericHint("cgroup.freeze", e));
        if (Wait(f, d, true)) return;
        f.TryWrite(d, "cgroup.freeze", "0", out _);
        throw new CgroupException($"{d}/cgroup.events did not show \"frozen 1\" within {MaxWaitMs / 1000} s: a " +
            "process cannot be frozen (uninterruptible sleep); the cgroup was thawed again — retry later",
            "cgroup.freeze", "1", Errors.EBUSY);
    }

    public static void Thaw(CgroupFiles f, string d)
    {
        f.Write(d, "cgroup.freeze", "0");
        if (!Wait(f, d, false))
            throw new CgroupException($"{d}/cgroup.events still shows \"frozen 1\": a parent cgroup is frozen; thaw " +
                "it first", "cgroup.freeze", "0", Errors.EBUSY);
    }

    public static bool IsFrozen(CgroupFiles f, string d) =>
        f.ReadKeyed(d, "cgroup.events").GetValueOrDefault("frozen") == 1;

    static bool Wait(CgroupFiles f, string d, bool frozen)
    {
        var start = Environment.TickCount64;
        for (var i = 0; ; i++)
        {
            if (IsFrozen(f, d) == frozen) return true;
            if (Environment.TickCount64 - start > MaxWaitMs) return false;
            Thread.Sleep(i < 10 ? 0 : 1);
        }
    }
}
