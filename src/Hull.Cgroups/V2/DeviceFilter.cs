using Hull.Linux;
using Hull.Linux.Bpf;

namespace Hull.Cgroups;

/// <summary>
/// The cgroup v2 device controller: a BPF_PROG_TYPE_CGROUP_DEVICE program compiled from a <see cref="DeviceRuleSet"/>
/// and attached to the cgroup directory (BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI).
/// <para>The kernel runs the program for every device open and mknod of a task in the cgroup (and its
/// descendants) with a <c>struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }</c>, access_type
/// being <c>(access &lt;&lt; 16) | type</c>; a return of 1 allows, 0 refuses with EPERM. Every program attached
/// to the cgroup and its ancestors must allow.</para>
/// <para>The program decides exactly as <see cref="DeviceRuleSet.IsAllowed"/> (the v1 controller's rule): with a
/// deny default, allow if one exception for the device holds every requested access bit; with an allow default,
/// refuse if one exception for the device holds any requested bit; otherwise the default.</para>
/// </summary>
public static class DeviceFilter
{
    /// <summary>The name the program is loaded under (shown by <c>bpftool prog</c> / <c>bpftool cgroup
    /// list</c>).</summary>
    public const string ProgramName = "hull_devices";
    /// <summary>The license string given to the kernel. Device programs call no helper, so no GPL-only helper is
    /// involved and any string is accepted; this one names the usual one for such programs.</summary>
    public const string License = "Apache-2.0";

    // Registers after the prologue.
    const int RType = 2, RAccess = 3, RMajor = 4, RMinor = 5, RTmp = 1;

    /// <summary>The program for <paramref name="rules"/>.</summary>
    public static BpfInsn[] Build(DeviceRuleSet rules)
    {
        var a = new BpfAssembler();
        // r1 = ctx. Load the three fields; the minor last, since it reuses nothing of r1 afterwards.
        a.LoadU32(RType, 1, 0)
         .Mov32Reg(RAccess, RType)
         .And32(RType, 0xffff)
         .Rsh32(RAccess, 16)
         .LoadU32(RMajor, 1, 4)
         .LoadU32(RMinor, 1, 8);
        var verdict = rules.DefaultAllow ? 0 : 1;   // what a matching exception decides
        foreach (var e in rules.Exceptions)
        {
            // The kernel's device numbers are 12-bit majors and 20-bit minors: a larger number never matches.
            if (e.Major > int.MaxValue || e.Minor > int.MaxValue) continue;
            var next = a.NewLabel();
            if (e.Type != 'a') a.JumpImm(BpfOp.JNE, RType,
                e.Type == 'b' ? BpfConst.DEVCG_DEV_BLOCK : BpfConst.DEVCG_DEV_CHAR, next);
            if (e.Major != DeviceRule.Any) a.JumpImm(BpfOp.JNE, RMajor, (int)e.Major, next);
            if (e.Minor != DeviceRule.Any) a.JumpImm(BpfOp.JNE, RMinor, (int)e.Minor, next);
            var acc = AccessBits(e.Access);
            if (rules.DefaultAllow)
            {
                // Deny exception: matches if any requested bit is in it.
                if (acc != 7)
                {
                    a.Mov32Reg(RTmp, RAccess).And32(RTmp, acc).JumpImm(BpfOp.JEQ, RTmp, 0, next);
                }
            }
            else if (acc != 7)
            {
                // Allow exception: matches if every requested bit is in it.
                a.Mov32Reg(RTmp, RAccess).And32(RTmp, ~acc & 7).JumpImm(BpfOp.JNE, RTmp, 0, next);
            }
            a.Mov64(0, verdict).Exit();
            a.Mark(next);
        }
        a.Mov64(0, rules.DefaultAllow ? 1 : 0).Exit();
        return a.Build();
    }

    /// <summary>"rwm" → BPF_DEVCG_ACC_READ | WRITE | MKNOD.</summary>
    public static int AccessBits(string access)
    {
        var bits = 0;
        foreach (var c in access)
            bits |= c switch { 'r' => BpfConst.DEVCG_ACC_READ, 'w' => BpfConst.DEVCG_ACC_WRITE,
                'm' => BpfConst.DEVCG_ACC_MKNOD, _ => 0 };
        return bits;
    }

    /// <summary>
    /// Makes <paramref name="rules"/> the device policy of the cgroup at <paramref name="cgroupDir"/>: loads the new
    /// program, attaches it (BPF_F_ALLOW_MULTI), then detaches the device programs that were attached to this cgroup
    /// before, so there is no moment without a program (in between both apply: access is the intersection).
    /// An allow-everything rule set detaches every device program instead. Returns the new program's id (0 if none).
    /// </summary>
    public static uint Apply(string cgroupDir, DeviceRuleSet rules)
    {
        using var dir = OpenDir(cgroupDir);
        var (old, flags) = Query(dir, cgroupDir);
        if (rules.DefaultAllow && rules.Exceptions.Count == 0)
        {
            DetachAll(dir, cgroupDir, old);
            return 0;
        }
        var insns = Build(rules);
        SafeFd prog;
        try { prog = BpfSys.ProgLoad(BpfConst.PROG_TYPE_CGROUP_DEVICE, insns, License, ProgramName,
            BpfConst.CGROUP_DEVICE); }
        catch (BpfException e) { throw new CgroupException(
            $"loading the device program for {cgroupDir} ({rules}): {e.Message}", cgroupDir, errno: e.Errno,
            inner: e); }
        using (prog)
        {
            // A cgroup whose programs were attached without BPF_F_ALLOW_MULTI (by another tool) takes one program:
            // attaching with the same flags replaces it atomically.
            var attachFlags = old.Length > 0 && (flags & BpfConst.F_ALLOW_MULTI) == 0 ? flags : BpfConst.F_ALLOW_MULTI;
            try { BpfSys.ProgAttach(dir, prog, BpfConst.CGROUP_DEVICE, attachFlags); }
            catch (BpfException e)
            {
                throw new CgroupException($"attaching the device program to {cgroupDir}: {e.Message}" +
                    (e.Errno == Errors.EBADF ? " — the directory is not on a cgroup2 mount" : ""), cgroupDir,
                        errno: e.Errno, inner: e);
            }
            var (now, _) = Query(dir, cgroupDir);
            var newId = now.Except(old).FirstOrDefault();
            if ((attachFlags & BpfConst.F_ALLOW_MULTI) != 0) DetachAll(dir, cgroupDir, old);
            return newId;
        }
    }

    /// <summary>Detaches every device program attached to the cgroup itself (not those of its ancestors), for a
    /// cgroup that stays but should no longer restrict devices. A missing directory is fine.</summary>
    public static void Detach(string cgroupDir)
    {
        if (!Sys.TryOpen(cgroupDir, O.RDONLY | O.DIRECTORY, out var dir, out var e))
        {
            dir.Dispose();
            if (e == Errors.ENOENT) return;
            throw new CgroupException($"open {cgroupDir}: {Errors.Describe(e)}", cgroupDir, errno: e);
        }
        using (dir) DetachAll(dir, cgroupDir, Query(dir, cgroupDir).Ids);
    }

    /// <summary>The ids of the device programs attached to the cgroup itself (<paramref name="effective"/>: the ones
    /// in effect for it, its ancestors' included).</summary>
    public static uint[] Attached(string cgroupDir, bool effective = false)
    {
        using var dir = OpenDir(cgroupDir);
        try { return BpfSys.ProgQuery(dir, BpfConst.CGROUP_DEVICE, effective).Ids; }
        catch (BpfException e) { throw new CgroupException($"querying the device programs of {cgroupDir}: {e.Message}",
            cgroupDir, errno: e.Errno, inner: e); }
    }

    static SafeFd OpenDir(string cgroupDir)
    {
        if (Sys.TryOpen(cgroupDir, O.RDONLY | O.DIRECTORY, out var fd, out var e)) return fd;
        fd.Dispose();
        throw new CgroupException($"open {cgroupDir}: {Errors.Describe(e)}"
            + (e == Errors.ENOENT ? " — the cgroup does not exist: call Create() first" : ""), cgroupDir, errno: e);
    }

    static (uint[] Ids, uint Flags) Query(SafeFd dir, string cgroupDir)
    {
        try { return BpfSys.ProgQuery(dir, BpfConst.CGROUP_DEVICE); }
        catch (BpfException e)
        {
            throw new CgroupException($"querying the device programs of {cgroupDir}: {e.Message}" +
                (e.Errno == Errors.EBADF ? " — the directory is not on a cgroup2 mount" : ""), cgroupDir,
                    errno: e.Errno, inner: e);
        }
    }

    static void DetachAll(SafeFd dir, string cgroupDir, uint[] ids)
    {
        foreach (var id in ids)
        {
            using var p = BpfSys.ProgGetFdById(id);
            if (p is null) continue;                                   // freed meanwhile
            if (!BpfSys.TryProgDetach(dir, p, BpfConst.CGROUP_DEVICE, out var e) && e != Errors.ENOENT)
                throw new CgroupException($"detaching device program {id} from {cgroupDir}: {Errors.Describe(e)}",
                    cgroupDir, errno: e);
        }
    }
}
