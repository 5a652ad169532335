using Hull.Oci;

namespace Hull.Seccomp;

/// <summary>
/// Compiles an OCI <c>linux.seccomp</c> section into a classic BPF program, as libseccomp would for runc, in C#.
/// See docs/seccomp.md for the program layout and the rule semantics.
/// </summary>
public static class SeccompCompiler
{
    const string Field = "linux.seccomp";

    static readonly string[] ActionNames =
    [
        "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP", "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
    ];

    static readonly string[] OpNames =
    [
        "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ",
    ];

    static readonly (string Name, SeccompFilterFlags Flag)[] FlagNames =
    [
        ("SECCOMP_FILTER_FLAG_TSYNC", SeccompFilterFlags.Tsync),
        ("SECCOMP_FILTER_FLAG_LOG", SeccompFilterFlags.Log),
        ("SECCOMP_FILTER_FLAG_SPEC_ALLOW", SeccompFilterFlags.SpecAllow),
        ("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV", SeccompFilterFlags.WaitKillableRecv),
    ];

    /// <summary>Architecture names the runtime spec and libseccomp know. Only the x86 family applies on this
    /// host.</summary>
    static readonly string[] ArchNames =
    [
        "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64", "SCMP_ARCH_MIPS",
        "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32",
        "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X",
        "SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64", "SCMP_ARCH_LOONGARCH64", "SCMP_ARCH_M68K",
        "SCMP_ARCH_SH", "SCMP_ARCH_SHEB",
    ];

    /// <summary>What a call from an ABI the filter does not cover gets: the whole process is killed (fail
    /// closed).</summary>
    public const uint BadArchAction = Bpf.RetKillProcess;

    internal enum Op { NE, LT, LE, EQ, GE, GT, MaskedEq }

    internal readonly record struct Cond(int Index, Op Op, ulong Value, ulong ValueTwo);

    internal sealed record Rule(int Order, Cond[] Conds, uint Action);

    /// <summary>Compiles <paramref name="profile"/>; throws <see cref="SeccompException"/> for invalid input.</summary>
    public static SeccompProgram Compile(Hull.Oci.Seccomp profile)
    {
        ArgumentNullException.ThrowIfNull(profile);
        var skipped = new List<string>();

        if (string.IsNullOrEmpty(profile.DefaultAction))
            throw new SeccompException($"{Field}.defaultAction is missing; valid values: " +
                $"{string.Join(", ", ActionNames)}");
        if (profile.DefaultAction == "SCMP_ACT_NOTIFY")
            throw new SeccompException($"{Field}.defaultAction: SCMP_ACT_NOTIFY cannot be the default action (the " +
                "runtime itself could not finish starting the container); use it on named syscalls");
        var defaultAction = ParseAction(profile.DefaultAction, profile.DefaultErrnoRet, $"{Field}.defaultAction",
            $"{Field}.defaultErrnoRet");

        var flags = SeccompFilterFlags.None;
        if (profile.Flags is not null)
            for (var i = 0; i < profile.Flags.Count; i++)
            {
                var name = profile.Flags[i];
                var idx = Array.FindIndex(FlagNames, f => f.Name == name);
                if (idx < 0)
                    throw new SeccompException($"{Field}.flags[{i}]: unknown flag \"{name}\"; valid flags: " +
                        $"{string.Join(", ", FlagNames.Select(f => f.Name))}");
                flags |= FlagNames[idx].Flag;
            }

        // The native architecture is always in the filter (libseccomp adds it and runc never removes it).
        var arches = new List<SeccompArch> { SeccompArch.X86_64 };
        if (profile.Architectures is not null)
            for (var i = 0; i < profile.Architectures.Count; i++)
            {
                var name = profile.Architectures[i];
                switch (name)
                {
                    case "SCMP_ARCH_X86_64": break;
                    case "SCMP_ARCH_X86": if (!arches.Contains(SeccompArch.X86)) arches.Add(SeccompArch.X86); break;
                    case "SCMP_ARCH_X32": if (!arches.Contains(SeccompArch.X32)) arches.Add(SeccompArch.X32); break;
                    default:
                        if (Array.IndexOf(ArchNames, name) < 0)
                            throw new SeccompException($"{Field}.architectures[{i}]: unknown architecture " +
                                $"\"{name}\"; valid values: {string.Join(", ", ArchNames)}");
                        skipped.Add($"{name} (not this host's)");
                        break;
                }
            }

        if (profile.ListenerMetadata is not null && string.IsNullOrEmpty(profile.ListenerPath))
            throw new SeccompException($"{Field}.listenerMetadata is set but {Field}.listenerPath is not; the " +
                "metadata is only sent to a listener");

        var rules = new List<(string[] Names, Rule Rule)>();
        var needsListener = false;
        var syscalls = profile.Syscalls ?? [];
        for (var i = 0; i < syscalls.Count; i++)
        {
            var s = syscalls[i] ?? throw new SeccompException($"{Field}.syscalls[{i}] is null");
            var f = $"{Field}.syscalls[{i}]";
            if (s.Names is null || s.Names.Count == 0)
                throw new SeccompException($"{f}.names is empty; list at least one syscall name");
            if (string.IsNullOrEmpty(s.Action))
                throw new SeccompException($"{f}.action is missing; valid values: {string.Join(", ", ActionNames)}");
            var action = ParseAction(s.Action, s.ErrnoRet, $"{f}.action", $"{f}.errnoRet");
            if (s.Action == "SCMP_ACT_NOTIFY") needsListener = true;
            var conds = new List<Cond>();
            if (s.Args is not null)
                for (var j = 0; j < s.Args.Count; j++)
                {
                    var a = s.Args[j] ?? throw new SeccompException($"{f}.args[{j}] is null");
                    if (a.Index > 5)
                        throw new SeccompException($"{f}.args[{j}].index is {a.Index}; a syscall has arguments 0 to 5");
                    var op = Array.IndexOf(OpNames, a.Op);
                    if (op < 0)
                        throw new SeccompException($"{f}.args[{j}].op: unknown operator \"{a.Op}\"; valid values: " +
                            $"{string.Join(", ", OpNames)}");
                    conds.Add(new Cond((int)a.Index, (Op)op, a.Value, (Op)op == Op.MaskedEq ? a.ValueTwo : 0));
                }
            foreach (var n in s.Names)
                if (string.IsNullOrWhiteSpace(n)) throw new SeccompException($"{f}.names has an empty name");
            rules.Add((s.Names.ToArray(), new Rule(i, Normalize(conds), action)));
        }

        if ((flags & SeccompFilterFlags.WaitKillableRecv) != 0 && !needsListener)
            throw new SeccompException($"{Field}.flags: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV only applies to a " +
                "filter with SCMP_ACT_NOTIFY rules, and this profile has none");
        if (needsListener)
        {
            flags |= SeccompFilterFlags.NewListener;
            if ((flags & SeccompFilterFlags.Tsync) != 0) flags |= SeccompFilterFlags.TsyncEsrch;
        }

        var asm = new BpfAssembler();
        var archLabels = arches.Select(_ => asm.NewLabel()).ToArray();
        var blocks = new List<(BpfAssembler.Label Label, SeccompArch Arch, List<Rule> Rules)>();

        asm.Ld(Bpf.OffsetArch);
        // x86_64 and x32 share AUDIT_ARCH_X86_64: one compare serves both (the number tells them apart).
        asm.Jmp(Bpf.JEQ, Bpf.AuditArchX86_64, archLabels[0], BpfAssembler.Label.Next);
        var x86 = arches.IndexOf(SeccompArch.X86);
        if (x86 >= 0) asm.Jmp(Bpf.JEQ, Bpf.AuditArchI386, archLabels[x86], BpfAssembler.Label.Next);
        asm.Ret(BadArchAction);

        // AUDIT_ARCH_X86_64: x86_64 numbers below the x32 bit, x32 numbers above.
        asm.Mark(archLabels[0]);
        asm.Ld(Bpf.OffsetNr);
        var upper = asm.NewLabel();
        asm.Jmp(Bpf.JGE, Bpf.X32SyscallBit, upper, BpfAssembler.Label.Next);
        EmitTree(asm, Resolve(SeccompArch.X86_64, rules, defaultAction, skipped), 0, Bpf.X32SyscallBit - 1,
            defaultAction, SeccompArch.X86_64, blocks);
        asm.Mark(upper);
        // -1 is what a tracer writes to skip a syscall: no ABI's number, so it gets the default action, not bad-arch.
        var notSkip = asm.NewLabel();
        asm.Jmp(Bpf.JEQ, 0xffffffff, BpfAssembler.Label.Next, notSkip);
        asm.Ret(defaultAction);
        asm.Mark(notSkip);
        if (arches.Contains(SeccompArch.X32))
            EmitTree(asm, Resolve(SeccompArch.X32, rules, defaultAction, skipped), Bpf.X32SyscallBit, 0xfffffffe,
                defaultAction, SeccompArch.X32, blocks);
        else
            asm.Ret(BadArchAction); // an x32 call while the profile does not cover x32

        if (x86 >= 0)
        {
            asm.Mark(archLabels[x86]);
            asm.Ld(Bpf.OffsetNr);
            EmitTree(asm, Resolve(SeccompArch.X86, rules, defaultAction, skipped), 0, 0xffffffff, defaultAction,
                SeccompArch.X86, blocks);
        }

        foreach (var (label, arch, blockRules) in blocks)
        {
            asm.Mark(label);
            EmitRules(asm, arch, blockRules, defaultAction);
        }

        var program = asm.Assemble();
        if (program.Length > Bpf.MaxInstructions)
            throw new SeccompException(
                $"{Field} compiles to {program.Length} BPF instructions; the kernel accepts at most " +
                    $"{Bpf.MaxInstructions}. " +
                "Each argument comparison costs up to 6 instructions per architecture: merge rules, drop argument " +
                    "filters, or list fewer architectures.");
        return new SeccompProgram(program, flags, needsListener, defaultAction, BadArchAction, arches, skipped);
    }

    internal static uint ParseAction(string name, uint? errnoRet, string field, string errnoField)
    {
        uint ret;
        switch (name)
        {
            case "SCMP_ACT_KILL":
            case "SCMP_ACT_KILL_THREAD": ret = Bpf.RetKillThread; break;
            case "SCMP_ACT_KILL_PROCESS": ret = Bpf.RetKillProcess; break;
            case "SCMP_ACT_TRAP": ret = Bpf.RetTrap; break;
            case "SCMP_ACT_ALLOW": ret = Bpf.RetAllow; break;
            case "SCMP_ACT_LOG": ret = Bpf.RetLog; break;
            case "SCMP_ACT_NOTIFY": ret = Bpf.RetUserNotif; break;
            case "SCMP_ACT_ERRNO":
            {
                var e = errnoRet ?? 1; // EPERM, as runc
                if (e > 4095) throw new SeccompException($"{errnoField} is {e}; an errno is 0 to 4095 (MAX_ERRNO)");
                return Bpf.RetErrno | e;
            }
            case "SCMP_ACT_TRACE":
            {
                var d = errnoRet ?? 1; // runc passes EPERM to the tracer when errnoRet is absent
                if (d > 0xffff) throw new SeccompException(
                    $"{errnoField} is {d}; SCMP_ACT_TRACE passes a 16-bit value (0 to 65535) to the tracer");
                return Bpf.RetTrace | d;
            }
            default:
                throw new SeccompException($"{field}: unknown action \"{name}\"; valid values: " +
                    $"{string.Join(", ", ActionNames)}");
        }
        if (errnoRet is not null)
            throw new SeccompException($"{errnoField} is set, but {name} returns no errno; it applies only to " +
                "SCMP_ACT_ERRNO and SCMP_ACT_TRACE");
        return ret;
    }

    static Cond[] Normalize(IEnumerable<Cond> conds) =>
        conds.Distinct().OrderBy(c => c.Index).ThenBy(c => c.Op).ThenBy(c => c.Value).ThenBy(c => c.ValueTwo).ToArray();

    /// <summary>An outcome per syscall number: a plain return value, or a list of argument rules (first match
    /// wins).</summary>
    internal readonly record struct Outcome(uint Ret, List<Rule>? Rules);

    static readonly Dictionary<string, uint>[] Tables =
    [
        SyscallTables.X86_64.ToDictionary(t => t.Name, t => t.Nr),
        SyscallTables.X86.ToDictionary(t => t.Name, t => t.Nr),
        SyscallTables.X32.ToDictionary(t => t.Name, t => t.Nr),
    ];

    /// <summary>The syscall number of <paramref name="name"/> on <paramref name="arch"/>, if that ABI has it.</summary>
    public static bool TryGetSyscallNumber(SeccompArch arch, string name, out uint nr) =>
        Tables[(int)arch].TryGetValue(name, out nr);

    /// <summary>Every syscall name this build knows for <paramref name="arch"/> (from the kernel headers it was
    /// generated from).</summary>
    public static IEnumerable<string> SyscallNames(SeccompArch arch) => Tables[(int)arch].Keys;

    static SortedDictionary<uint, Outcome> Resolve(SeccompArch arch, List<(string[] Names, Rule Rule)> rules,
        uint defaultAction, List<string> skipped)
    {
        var byNr = new SortedDictionary<uint, (string Name, List<Rule> Rules)>();
        var table = Tables[(int)arch];
        foreach (var (names, rule) in rules)
            foreach (var name in names)
            {
                if (!table.TryGetValue(name, out var nr))
                {
                    var note = $"{name} ({ArchName(arch)})";
                    if (!skipped.Contains(note)) skipped.Add(note);
                    continue;
                }
                if (!byNr.TryGetValue(nr, out var e)) byNr[nr] = e = (name, []);
                var r = rule;
                if (arch == SeccompArch.X86)
                    // A 32-bit ABI passes 32-bit arguments: compare the low words only, as libseccomp does.
                    r = rule with { Conds = Normalize(rule.Conds.Select(c =>
                        c with { Value = c.Value & 0xffffffff, ValueTwo = c.ValueTwo & 0xffffffff })) };
                e.Rules.Add(r);
            }

        var result = new SortedDictionary<uint, Outcome>();
        foreach (var (nr, (name, list)) in byNr)
            result[nr] = ResolveSyscall(name, list, defaultAction);
        return result;
    }

    internal static string ArchName(SeccompArch a) => a switch
    {
        SeccompArch.X86_64 => "SCMP_ARCH_X86_64",
        SeccompArch.X86 => "SCMP_ARCH_X86",
        _ => "SCMP_ARCH_X32",
    };

    /// <summary>
    /// The rule semantics for one syscall (docs/seccomp.md "Which rule wins"):
    /// rules with the default action are dropped (runc); an unconditional rule beats every conditional one
    /// (libseccomp);
    /// of several unconditional rules the first in profile order wins (libseccomp keeps the existing one); two rules
    /// with
    /// the same comparisons that differ in action are an error (libseccomp EEXIST);
    /// a rule whose comparisons include all of another rule's is dropped (the more general rule wins, as libseccomp's
    /// tree);
    /// the remaining rules are tried in profile order and the first whose comparisons all hold wins.
    /// </summary>
    internal static Outcome ResolveSyscall(string name, List<Rule> input, uint defaultAction)
    {
        var rules = input.Where(r => r.Action != defaultAction).ToList();
        var uncond = rules.Where(r => r.Conds.Length == 0).ToList();
        if (uncond.Count > 0)
        {
            // The first unconditional rule wins: libseccomp keeps an existing argument-less rule and drops a later one
            // ("the existing filter is at least as large"), which real profiles rely on (containers-common lists setns
            // both in its allow list and in a capability-dependent ERRNO rule).
            return new Outcome(uncond.MinBy(r => r.Order)!.Action, null);
        }

        var kept = new List<Rule>();
        foreach (var r in rules)
        {
            var same = kept.FirstOrDefault(k => k.Conds.AsSpan().SequenceEqual(r.Conds));
            if (same is null) { kept.Add(r); continue; }
            if (same.Action != r.Action)
                throw new SeccompException(
                    $"{Field}.syscalls[{same.Order}] and {Field}.syscalls[{r.Order}] give {name} with the same " +
                        "argument filters two different actions " +
                    $"({Bpf.DescribeReturn(same.Action)} and {Bpf.DescribeReturn(r.Action)}); keep one of them");
        }
        kept.RemoveAll(r => kept.Any(g => !ReferenceEquals(g, r) && g.Conds.Length < r.Conds.Length
            && g.Conds.All(r.Conds.Contains)));
        return kept.Count == 0 ? new Outcome(defaultAction, null) : new Outcome(0, kept);
    }

    /// <summary>
    /// Emits a balanced binary search over the syscall numbers in [lo, hi]: neighbouring numbers with the same plain
    /// action are merged into one interval; each leaf is a <c>ret</c>, or a <c>ja</c> to an argument block.
    /// </summary>
    static void EmitTree(BpfAssembler asm, SortedDictionary<uint, Outcome> outcomes, uint lo, uint hi,
        uint defaultAction,
        SeccompArch arch, List<(BpfAssembler.Label, SeccompArch, List<Rule>)> blocks)
    {
        // Intervals (start, outcome) covering [lo, hi]; outcome.Rules != null marks a block.
        var starts = new List<uint>();
        var leaves = new List<Outcome>();
        void Add(uint start, Outcome o)
        {
            if (leaves.Count > 0 && o.Rules is null && leaves[^1].Rules is null && leaves[^1].Ret == o.Ret) return;
            starts.Add(start);
            leaves.Add(o);
        }
        var cursor = (ulong)lo;
        foreach (var (nr, o) in outcomes)
        {
            if (nr < lo || nr > hi) continue;
            if (nr > cursor) Add((uint)cursor, new Outcome(defaultAction, null));
            Add(nr, o);
            cursor = (ulong)nr + 1;
        }
        if (cursor <= hi) Add((uint)cursor, new Outcome(defaultAction, null));

        void Emit(int a, int b)
        {
            if (a == b)
            {
                var o = leaves[a];
                if (o.Rules is null) { asm.Ret(o.Ret); return; }
                var l = asm.NewLabel();
                blocks.Add((l, arch, o.Rules));
                asm.Ja(l);
                return;
            }
            var mid = (a + b + 1) / 2;
            var right = asm.NewLabel();
            asm.Jmp(Bpf.JGE, starts[mid], right, BpfAssembler.Label.Next);
            Emit(a, mid - 1);
            asm.Mark(right);
            Emit(mid, b);
        }
        Emit(0, leaves.Count - 1);
    }

    /// <summary>Argument rules of one syscall: each rule is a chain of comparisons (AND); the first chain that holds
    /// returns its action; when none holds, the default action. Runs of rules that each test one argument for
    /// equality become a switch on that argument (the values differ, so at most one of them can hold).</summary>
    static void EmitRules(BpfAssembler asm, SeccompArch arch, List<Rule> rules, uint defaultAction)
    {
        var wide = arch != SeccompArch.X86;
        bool SingleEq(Rule r) => r.Conds.Length == 1 && r.Conds[0].Op == Op.EQ;
        var i = 0;
        while (i < rules.Count)
        {
            var j = i;
            if (wide && SingleEq(rules[i]))
                while (j < rules.Count && SingleEq(rules[j]) && rules[j].Conds[0].Index == rules[i].Conds[0].Index &&
                       rules[j].Conds[0].Value >> 32 == rules[i].Conds[0].Value >> 32) j++;
            if (j - i >= 2)
            {
                var c0 = rules[i].Conds[0];
                var end = asm.NewLabel();
                asm.Ld(Bpf.ArgHigh(c0.Index));
                asm.Jmp(Bpf.JEQ, (uint)(c0.Value >> 32), BpfAssembler.Label.Next, end);
                asm.Ld(Bpf.ArgLow(c0.Index));
                for (var k = i; k < j; k++)
                {
                    var skip = asm.NewLabel();
                    asm.Jmp(Bpf.JEQ, (uint)rules[k].Conds[0].Value, BpfAssembler.Label.Next, skip);
                    asm.Ret(rules[k].Action);
                    asm.Mark(skip);
                }
                asm.Mark(end);
                i = j;
                continue;
            }
            var fail = asm.NewLabel();
            var conds = rules[i].Conds;
            for (var c = 0; c < conds.Length; c++)
            {
                // Several "not equal" on one argument (same high word): test the high word once.
                var d = c;
                if (wide && conds[c].Op == Op.NE)
                    while (d < conds.Length && conds[d].Op == Op.NE && conds[d].Index == conds[c].Index
                        && conds[d].Value >> 32 == conds[c].Value >> 32) d++;
                if (d - c >= 2)
                {
                    var pass = asm.NewLabel();
                    asm.Ld(Bpf.ArgHigh(conds[c].Index));
                    asm.Jmp(Bpf.JEQ, (uint)(conds[c].Value >> 32), BpfAssembler.Label.Next, pass);
                    asm.Ld(Bpf.ArgLow(conds[c].Index));
                    for (var k = c; k < d; k++) asm.Jmp(Bpf.JEQ, (uint)conds[k].Value, fail, BpfAssembler.Label.Next);
                    asm.Mark(pass);
                    c = d - 1;
                    continue;
                }
                EmitCond(asm, conds[c], wide, fail);
            }
            asm.Ret(rules[i].Action);
            asm.Mark(fail);
            i++;
        }
        asm.Ret(defaultAction);
    }

    /// <summary>One comparison of a 64-bit argument (two 32-bit words, high first) or, on a 32-bit ABI, of its low
    /// word.
    /// Falls through when it holds, jumps to <paramref name="fail"/> when not.</summary>
    static void EmitCond(BpfAssembler asm, Cond c, bool wide, BpfAssembler.Label fail)
    {
        var next = BpfAssembler.Label.Next;
        uint vh = (uint)(c.Value >> 32), vl = (uint)c.Value;
        var hiOff = Bpf.ArgHigh(c.Index);
        var loOff = Bpf.ArgLow(c.Index);
        if (c.Op == Op.MaskedEq)
        {
            uint dh = (uint)(c.ValueTwo >> 32), dl = (uint)c.ValueTwo;
            if (wide) MaskedWord(asm, hiOff, vh, dh, fail);
            MaskedWord(asm, loOff, vl, dl, fail);
            return;
        }
        if (!wide)
        {
            asm.Ld(loOff);
            switch (c.Op)
            {
                case Op.EQ: asm.Jmp(Bpf.JEQ, vl, next, fail); break;
                case Op.NE: asm.Jmp(Bpf.JEQ, vl, fail, next); break;
                case Op.GT: asm.Jmp(Bpf.JGT, vl, next, fail); break;
                case Op.GE: asm.Jmp(Bpf.JGE, vl, next, fail); break;
                case Op.LT: asm.Jmp(Bpf.JGE, vl, fail, next); break;
                case Op.LE: asm.Jmp(Bpf.JGT, vl, fail, next); break;
            }
            return;
        }
        var pass = asm.NewLabel();
        asm.Ld(hiOff);
        switch (c.Op)
        {
            case Op.EQ:
                asm.Jmp(Bpf.JEQ, vh, next, fail);
                asm.Ld(loOff);
                asm.Jmp(Bpf.JEQ, vl, next, fail);
                break;
            case Op.NE:
                asm.Jmp(Bpf.JEQ, vh, next, pass);
                asm.Ld(loOff);
                asm.Jmp(Bpf.JEQ, vl, fail, next);
                break;
            case Op.GT:
            case Op.GE:
                asm.Jmp(Bpf.JGT, vh, pass, next);
                asm.Jmp(Bpf.JEQ, vh, next, fail);
                asm.Ld(loOff);
                asm.Jmp(c.Op == Op.GT ? Bpf.JGT : Bpf.JGE, vl, next, fail);
                break;
            case Op.LT:
            case Op.LE:
                asm.Jmp(Bpf.JGT, vh, fail, next);
                asm.Jmp(Bpf.JEQ, vh, next, pass);
                asm.Ld(loOff);
                asm.Jmp(c.Op == Op.LT ? Bpf.JGE : Bpf.JGT, vl, fail, next);
                break;
        }
        asm.Mark(pass);
    }

    /// <summary>(word &amp; mask) == datum: a jset when that is a bit test (A stays loaded), else and + jeq.</summary>
    static void MaskedWord(BpfAssembler asm, uint offset, uint mask, uint datum, BpfAssembler.Label fail)
    {
        if (mask == 0 && datum == 0) return;  // always holds
        if ((datum & ~mask) != 0)             // a bit outside the mask can never compare equal
        {
            asm.Ja(fail);
            return;
        }
        asm.Ld(offset);
        if (datum == 0)
            asm.Jmp(Bpf.JSET, mask, fail, BpfAssembler.Label.Next);
        else if (datum == mask && (mask & (mask - 1)) == 0)
            asm.Jmp(Bpf.JSET, mask, BpfAssembler.Label.Next, fail);
        else
        {
            if (mask != 0xffffffff) asm.And(mask);
            asm.Jmp(Bpf.JEQ, datum, BpfAssembler.Label.Next, fail);
        }
    }
}
