using System.Runtime.InteropServices;

namespace Hull.Seccomp;

/// <summary>One classic BPF instruction (struct sock_filter).</summary>
[StructLayout(LayoutKind.Sequential)]
public readonly record struct SockFilter(ushort Code, byte Jt, byte Jf, uint K)
{
    public override string ToString() => Bpf.Disassemble(this);
}

/// <summary>Classic BPF opcodes and the seccomp return values and data layout (linux/filter.h,
/// linux/seccomp.h).</summary>
public static class Bpf
{
    public const ushort LD = 0x00, ALU = 0x04, JMP = 0x05, RET = 0x06;
    public const ushort W = 0x00, ABS = 0x20, K = 0x00;
    public const ushort AND = 0x50;
    public const ushort JA = 0x00, JEQ = 0x10, JGT = 0x20, JGE = 0x30, JSET = 0x40;

    /// <summary>The kernel's BPF_MAXINSNS for a seccomp filter.</summary>
    public const int MaxInstructions = 4096;

    // struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
    public const uint OffsetNr = 0, OffsetArch = 4, OffsetIp = 8, OffsetArgs = 16;
    public static uint ArgLow(int i) => OffsetArgs + 8 * (uint)i;
    public static uint ArgHigh(int i) => OffsetArgs + 8 * (uint)i + 4;

    // linux/audit.h
    public const uint AuditArchX86_64 = 0xC000003E, AuditArchI386 = 0x40000003;
    public const uint X32SyscallBit = 0x40000000;

    // seccomp return values (the action sits in the top 16 bits, data in the low 16).
    public const uint RetKillProcess = 0x80000000, RetKillThread = 0x00000000, RetTrap = 0x00030000,
        RetErrno = 0x00050000, RetUserNotif = 0x7fc00000, RetTrace = 0x7ff00000, RetLog = 0x7ffc0000,
        RetAllow = 0x7fff0000;
    public const uint RetActionFull = 0xffff0000, RetData = 0x0000ffff;

    public static string DescribeReturn(uint ret)
    {
        var data = ret & RetData;
        return (ret & RetActionFull) switch
        {
            RetKillProcess => "KILL_PROCESS",
            RetKillThread => "KILL_THREAD",
            RetTrap => "TRAP",
            RetErrno => $"ERRNO({data})",
            RetUserNotif => "USER_NOTIF",
            RetTrace => $"TRACE({data})",
            RetLog => "LOG",
            RetAllow => "ALLOW",
            _ => $"0x{ret:x8}",
        };
    }

    public static string Disassemble(SockFilter i)
    {
        var cls = i.Code & 0x07;
        return cls switch
        {
            LD => $"ld [{i.K}]",
            ALU => (i.Code & 0xf0) == AND ? $"and #0x{i.K:x}" : $"alu 0x{i.Code:x} #0x{i.K:x}",
            RET => $"ret {DescribeReturn(i.K)}",
            JMP => (i.Code & 0xf0) switch
            {
                JA => $"ja +{i.K}",
                JEQ => $"jeq #0x{i.K:x} jt +{i.Jt} jf +{i.Jf}",
                JGT => $"jgt #0x{i.K:x} jt +{i.Jt} jf +{i.Jf}",
                JGE => $"jge #0x{i.K:x} jt +{i.Jt} jf +{i.Jf}",
                JSET => $"jset #0x{i.K:x} jt +{i.Jt} jf +{i.Jf}",
                _ => $"jmp? 0x{i.Code:x}",
            },
            _ => $"op 0x{i.Code:x} k 0x{i.K:x}",
        };
    }
}

/// <summary>
/// A tiny assembler for forward-only classic BPF with symbolic labels. Conditional jumps reach at most 255
/// instructions; when a target is further, the assembler puts a <c>ja</c> trampoline right after the jump
/// (relaxing until every offset fits).
/// </summary>
internal sealed class BpfAssembler
{
    public readonly struct Label(int id)
    {
        public readonly int Id = id;
        public static readonly Label Next = new(-1);
        public bool IsNext => Id == -1;
    }

    enum Kind { Plain, Cond, Ja, Mark }

    struct Item
    {
        public Kind Kind;
        public ushort Code;
        public uint K;
        public Label T, F;
        public bool FarT, FarF;
    }

    readonly List<Item> _items = [];
    int _labels;

    // What the accumulator holds (the seccomp_data offset of the word loaded last, or null after an ALU op), tracked
    // along the code as it is emitted: a load of the word A already holds on every path to this point is left out.
    uint? _acc;
    bool _reachable = true;
    readonly Dictionary<int, uint?> _incoming = [];

    public Label NewLabel() => new(_labels++);

    public void Mark(Label l)
    {
        var has = _incoming.Remove(l.Id, out var state);
        if (has && _reachable) _acc = state == _acc ? _acc : null;
        else if (has) _acc = state;
        _reachable |= has;
        _items.Add(new Item { Kind = Kind.Mark, T = l });
    }

    /// <summary>Loads a word of seccomp_data into A, unless A already holds it on every path here.</summary>
    public void Ld(uint offset)
    {
        if (_reachable && _acc == offset) return;
        _items.Add(new Item { Kind = Kind.Plain, Code = Bpf.LD | Bpf.W | Bpf.ABS, K = offset });
        _acc = offset;
    }

    public void And(uint k)
    {
        _items.Add(new Item { Kind = Kind.Plain, Code = Bpf.ALU | Bpf.AND | Bpf.K, K = k });
        _acc = null;
    }

    public void Ret(uint k)
    {
        _items.Add(new Item { Kind = Kind.Plain, Code = Bpf.RET | Bpf.K, K = k });
        _reachable = false;
    }

    public void Ja(Label l)
    {
        Flow(l);
        _items.Add(new Item { Kind = Kind.Ja, Code = Bpf.JMP | Bpf.JA, T = l });
        _reachable = false;
    }

    public void Jmp(ushort op, uint k, Label t, Label f)
    {
        Flow(t);
        Flow(f);
        _items.Add(new Item { Kind = Kind.Cond, Code = (ushort)(Bpf.JMP | op | Bpf.K), K = k, T = t, F = f });
        if (!t.IsNext && !f.IsNext) _reachable = false;
    }

    void Flow(Label l)
    {
        if (l.IsNext || !_reachable) return;
        _incoming[l.Id] = _incoming.TryGetValue(l.Id, out var s) ? (s == _acc ? s : null) : _acc;
    }

    static int Size(in Item it) => it.Kind switch
    {
        Kind.Mark => 0,
        Kind.Cond => 1 + (it.FarT ? 1 : 0) + (it.FarF ? 1 : 0),
        _ => 1,
    };

    public SockFilter[] Assemble()
    {
        var items = _items.ToArray();
        var pos = new int[items.Length];
        var labelPos = new int[_labels];
        while (true)
        {
            Array.Fill(labelPos, -1);
            var p = 0;
            for (var i = 0; i < items.Length; i++)
            {
                pos[i] = p;
                if (items[i].Kind == Kind.Mark) labelPos[items[i].T.Id] = p;
                p += Size(items[i]);
            }
            var changed = false;
            for (var i = 0; i < items.Length; i++)
            {
                if (items[i].Kind != Kind.Cond) continue;
                ref var it = ref items[i];
                var next = pos[i] + Size(it);
                if (!it.FarT && !it.T.IsNext && Target(labelPos, it.T) - (pos[i] + 1) > 255) { it.FarT = true; changed =
                    true; }
                if (!it.FarF && !it.F.IsNext && Target(labelPos, it.F) - (pos[i] + 1) > 255) { it.FarF = true; changed =
                    true; }
                _ = next;
            }
            if (!changed) break;
        }

        var output = new List<SockFilter>();
        for (var i = 0; i < items.Length; i++)
        {
            var it = items[i];
            var here = pos[i];
            switch (it.Kind)
            {
                case Kind.Mark: break;
                case Kind.Plain: output.Add(new SockFilter(it.Code, 0, 0, it.K)); break;
                case Kind.Ja:
                {
                    var off = Target(labelPos, it.T) - (here + 1);
                    if (it.T.IsNext) off = 0;
                    if (off < 0) throw new InvalidOperationException("BPF assembler: backward jump");
                    output.Add(new SockFilter(it.Code, 0, 0, (uint)off));
                    break;
                }
                case Kind.Cond:
                {
                    var next = here + Size(it);
                    int Off(Label l, bool far, int trampolineIndex) =>
                        far ? trampolineIndex : (l.IsNext ? next : Target(labelPos, l)) - (here + 1);
                    var jt = Off(it.T, it.FarT, 0);
                    var jf = Off(it.F, it.FarF, it.FarT ? 1 : 0);
                    if (jt is < 0 or > 255 || jf is < 0 or > 255) throw new InvalidOperationException(
                        "BPF assembler: jump out of range");
                    output.Add(new SockFilter(it.Code, (byte)jt, (byte)jf, it.K));
                    var tpos = here + 1;
                    if (it.FarT) { output.Add(new SockFilter(Bpf.JMP | Bpf.JA, 0, 0,
                        (uint)(Target(labelPos, it.T) - (tpos + 1)))); tpos++; }
                    if (it.FarF) output.Add(new SockFilter(Bpf.JMP | Bpf.JA, 0, 0,
                        (uint)(Target(labelPos, it.F) - (tpos + 1))));
                    break;
                }
            }
        }
        return output.ToArray();
    }

    static int Target(int[] labelPos, Label l)
    {
        var p = labelPos[l.Id];
        if (p < 0) throw new InvalidOperationException($"BPF assembler: label {l.Id} is never placed");
        return p;
    }
}
