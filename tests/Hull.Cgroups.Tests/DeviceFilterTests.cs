using Hull.Cgroups;
using Hull.Linux.Bpf;
using Hull.Oci;
using Xunit;

namespace Hull.Cgroups.Tests;

/// <summary>The eBPF device program against the v1 rule semantics (<see cref="DeviceRuleSet.IsAllowed"/>), in an
/// interpreter.</summary>
public class DeviceFilterTests
{
    static DeviceCgroup R(bool allow, string? type = null, long? major = null, long? minor = null,
        string? access = null) =>
        new() { Allow = allow, Type = type, Major = major, Minor = minor, Access = access };

    static readonly string[] Accesses = ["r", "w", "m", "rw", "rm", "wm", "rwm"];
    static readonly uint[] Numbers = [0, 1, 3, 5, 7, 8, 136, 4095];

    static void AssertSameAsV1(DeviceRuleSet rules, string what)
    {
        var prog = DeviceFilter.Build(rules);
        foreach (var t in "bc")
            foreach (var maj in Numbers)
                foreach (var min in Numbers)
                    foreach (var acc in Accesses)
                    {
                        var want = rules.IsAllowed(t, maj, min, acc);
                        var got = EbpfInterpreter.Allows(prog, t, maj, min, acc);
                        if (want != got)
                            Assert.Fail($"{what}: {t} {maj}:{min} {acc}: v1 says {(want ? "allow" : "deny")}, " +
                                $"program says {(got ? "allow" : "deny")}\nrules: " +
                                $"{rules}\n{string.Join("\n", prog.Select((i, n) => $"{n,3}: {i}"))}");
                    }
    }

    [Fact]
    public void The_usual_container_allowlist()
    {
        var rules = DeviceRuleSet.Compile([R(false), R(true, "c", 1, 3, "rwm"), R(true, "c", 1, 5, "r"),
            R(true, "c", 136, null, "rw"), R(true, "b", null, null, "m")]);
        var prog = DeviceFilter.Build(rules);
        Assert.True(EbpfInterpreter.Allows(prog, 'c', 1, 3, "rw"));
        Assert.True(EbpfInterpreter.Allows(prog, 'c', 1, 5, "r"));
        Assert.False(EbpfInterpreter.Allows(prog, 'c', 1, 5, "w"));
        Assert.False(EbpfInterpreter.Allows(prog, 'c', 1, 5, "rw"));
        Assert.True(EbpfInterpreter.Allows(prog, 'c', 136, 9, "w"));
        Assert.False(EbpfInterpreter.Allows(prog, 'c', 136, 9, "m"));
        Assert.True(EbpfInterpreter.Allows(prog, 'b', 8, 0, "m"));
        Assert.False(EbpfInterpreter.Allows(prog, 'b', 8, 0, "r"));
        Assert.False(EbpfInterpreter.Allows(prog, 'c', 10, 200, "r"));
        AssertSameAsV1(rules, "allowlist");
    }

    [Fact]
    public void A_denylist_refuses_any_overlapping_bit()
    {
        var rules = DeviceRuleSet.Compile([R(false, "c", 1, 5, "w"), R(false, "b", 8, null, "rwm")]);
        Assert.True(rules.DefaultAllow);
        var prog = DeviceFilter.Build(rules);
        Assert.True(EbpfInterpreter.Allows(prog, 'c', 1, 5, "r"));
        Assert.False(EbpfInterpreter.Allows(prog, 'c', 1, 5, "rw"));
        Assert.False(EbpfInterpreter.Allows(prog, 'b', 8, 3, "m"));
        Assert.True(EbpfInterpreter.Allows(prog, 'b', 9, 3, "rwm"));
        AssertSameAsV1(rules, "denylist");
    }

    [Fact]
    public void Allow_all_and_deny_all_are_one_return()
    {
        var all = DeviceFilter.Build(DeviceRuleSet.AllowAll);
        Assert.True(EbpfInterpreter.Allows(all, 'b', 0, 0, "rwm"));
        var none = DeviceFilter.Build(DeviceRuleSet.Compile([R(false)]));
        Assert.False(EbpfInterpreter.Allows(none, 'c', 1, 3, "r"));
        // Prologue (6) + mov + exit.
        Assert.Equal(8, none.Length);
        Assert.Equal("r0 = 0x0", none[^2].ToString());
        Assert.Equal("exit", none[^1].ToString());
    }

    [Fact]
    public void Numbers_beyond_the_kernels_range_never_match()
    {
        var rules = DeviceRuleSet.Compile([R(false), R(true, "c", 5_000_000_000, 1, "rwm"), R(true, "c", 1, 3, "r")]);
        var prog = DeviceFilter.Build(rules);
        Assert.True(EbpfInterpreter.Allows(prog, 'c', 1, 3, "r"));
        Assert.False(EbpfInterpreter.Allows(prog, 'c', 705032704, 1, "r"));   // 5e9 truncated to 32 bits
        AssertSameAsV1(rules, "large numbers");
    }

    [Fact]
    public void Program_text_reads_like_bpftool()
    {
        var prog = DeviceFilter.Build(DeviceRuleSet.Compile([R(false), R(true, "c", 1, 5, "r")]));
        var text = prog.Select(i => i.ToString()).ToArray();
        Assert.Equal("r2 = *(u32 *)(r1 + 0)", text[0]);
        Assert.Equal("w3 = w2", text[1]);
        Assert.Equal("w2 &= 0xffff", text[2]);
        Assert.Equal("w3 >>= 0x10", text[3]);
        Assert.Equal("if r2 != 0x2 goto +7", text[6]);
        Assert.Contains("w1 &= 0x5", text);   // anything but read (write|mknod) must be absent
    }

    [Fact]
    public void Many_random_rule_lists_decide_as_the_v1_controller()
    {
        var rng = new Random(20261126);
        string[] types = ["a", "b", "c"];
        long?[] nums = [null, -1, 0, 1, 3, 5, 8, 136];
        for (var n = 0; n < 400; n++)
        {
            var list = new List<DeviceCgroup>();
            // Start from deny-all or allow-all half of the time, as runtimes do.
            if (rng.Next(2) == 0) list.Add(R(rng.Next(4) == 0));
            var count = rng.Next(0, 9);
            for (var k = 0; k < count; k++)
            {
                var access = new string("rwm".Where(_ => rng.Next(2) == 0).ToArray());
                list.Add(R(rng.Next(3) != 0, types[rng.Next(3)], nums[rng.Next(nums.Length)],
                    nums[rng.Next(nums.Length)],
                    access.Length == 0 ? null : access));
            }
            var rules = DeviceRuleSet.Compile(list);
            AssertSameAsV1(rules, $"list {n}: " +
                $"[{string.Join(", ", list.Select(d => $"{(d.Allow ? "allow" : "deny")} {d.Type ?? "a"} " +
                    $"{d.Major?.ToString() ?? "*"}:{d.Minor?.ToString() ?? "*"} {d.Access ?? "rwm"}"))}]");
        }
    }

    [Fact]
    public void Assembler_resolves_forward_jumps_and_refuses_unplaced_labels()
    {
        var a = new BpfAssembler();
        var l = a.NewLabel();
        a.Mov64(0, 0).JumpImm(BpfOp.JEQ, 0, 0, l).Mov64(0, 1).Mark(l).Exit();
        var p = a.Build();
        Assert.Equal(1, p[1].Off);
        Assert.Equal(0ul, EbpfInterpreter.Run(p, 0, 0, 0).R0);
        var b = new BpfAssembler();
        b.Goto(b.NewLabel());
        Assert.Throws<InvalidOperationException>(() => b.Build());
        Assert.Equal(8, System.Runtime.InteropServices.Marshal.SizeOf<BpfInsn>());
        var i = new BpfInsn(0x61, 2, 1, -4, 7);
        Assert.Equal((2, 1, (short)-4, 7), (i.Dst, i.Src, i.Off, i.Imm));
    }
}
