using System.Runtime.InteropServices;

namespace Hull.Linux.Bpf;

/// <summary>
/// One eBPF instruction, laid out as the kernel's <c>struct bpf_insn</c> (8 bytes): opcode, destination and source
/// register (4 bits each), a signed 16-bit offset and a signed 32-bit immediate.
/// </summary>
[StructLayout(LayoutKind.Sequential, Size = 8)]
public readonly struct BpfInsn(byte code, byte dst, byte src, short off, int imm) : IEquatable<BpfInsn>
{
    public readonly byte Code = code;
    readonly byte _regs = (byte)((dst & 0xf) | ((src & 0xf) << 4));
    public readonly short Off = off;
    public readonly int Imm = imm;

    public byte Dst => (byte)(_regs & 0xf);
    public byte Src => (byte)(_regs >> 4);
    public byte Class => (byte)(Code & 0x07);

    public bool Equals(BpfInsn o) => Code == o.Code && _regs == o._regs && Off == o.Off && Imm == o.Imm;
    public override bool Equals(object? obj) => obj is BpfInsn o && Equals(o);
    public override int GetHashCode() => HashCode.Combine(Code, _regs, Off, Imm);

    /// <summary>bpftool-style text, e.g. "r2 = *(u32 *)(r1 + 0)", "if r2 != 0x2 goto +3", "w1 &amp;= 0x6".</summary>
    public override string ToString()
    {
        var cls = Code & 0x07;
        var op = Code & 0xf0;
        var useX = (Code & BpfOp.X) != 0;
        string R(int r, bool w = false) => (w ? "w" : "r") + r;
        switch (cls)
        {
            case BpfOp.LDX when (Code & 0xe0) == BpfOp.MEM:
                return $"{R(Dst)} = *({Size(Code & 0x18)} *)({R(Src)} {(Off < 0 ? "-" : "+")} {Math.Abs((int)Off)})";
            case BpfOp.ALU or BpfOp.ALU64:
            {
                var w = cls == BpfOp.ALU;
                var rhs = useX ? R(Src, w) : $"0x{Imm:x}";
                var sym = op switch
                {
                    BpfOp.ADD => "+=", BpfOp.SUB => "-=", BpfOp.AND => "&=", BpfOp.OR => "|=", BpfOp.LSH => "<<=",
                    BpfOp.RSH => ">>=", BpfOp.XOR => "^=", BpfOp.MOV => "=", _ => $"?{op:x}=",
                };
                return $"{R(Dst, w)} {sym} {rhs}";
            }
            case BpfOp.JMP or BpfOp.JMP32:
            {
                if (op == BpfOp.EXIT) return "exit";
                if (op == BpfOp.JA) return $"goto {Rel(Off)}";
                var w = cls == BpfOp.JMP32;
                var rhs = useX ? R(Src, w) : $"0x{Imm:x}";
                var sym = op switch
                {
                    BpfOp.JEQ => "==", BpfOp.JNE => "!=", BpfOp.JSET => "&", BpfOp.JGT => ">", BpfOp.JGE => ">=",
                    BpfOp.JLT => "<", BpfOp.JLE => "<=", _ => $"?{op:x}",
                };
                return $"if {R(Dst, w)} {sym} {rhs} goto {Rel(Off)}";
            }
            default:
                return $"(code 0x{Code:x2} dst {Dst} src {Src} off {Off} imm {Imm})";
        }
        static string Size(int s) => s switch { BpfOp.W => "u32", BpfOp.H => "u16", BpfOp.B => "u8", _ => "u64" };
        static string Rel(int off) => off < 0 ? off.ToString() : "+" + off;
    }
}

/// <summary>The opcode parts of <see cref="BpfInsn.Code"/> (linux/bpf_common.h, linux/bpf.h).</summary>
public static class BpfOp
{
    // Classes.
    public const int LD = 0x00, LDX = 0x01, ST = 0x02, STX = 0x03, ALU = 0x04, JMP = 0x05, JMP32 = 0x06, ALU64 = 0x07;
    // Sizes and modes (loads and stores).
    public const int W = 0x00, H = 0x08, B = 0x10, DW = 0x18, IMM = 0x00, MEM = 0x60;
    // Source: the immediate (K) or the source register (X).
    public const int K = 0x00, X = 0x08;
    // ALU operations.
    public const int ADD = 0x00, SUB = 0x10, OR = 0x40, AND = 0x50, LSH = 0x60, RSH = 0x70, XOR = 0xa0, MOV = 0xb0;
    // Jump operations.
    public const int JA = 0x00, JEQ = 0x10, JGT = 0x20, JGE = 0x30, JSET = 0x40, JNE = 0x50, EXIT = 0x90, JLT = 0xa0,
        JLE = 0xb0;
}

/// <summary>
/// A small eBPF assembler: emits instructions and resolves forward jumps to labels. Registers are 0..10
/// (r0 return value, r1 context at entry, r10 frame pointer); "32" methods use the 32-bit sub-registers (w0..w9),
/// whose results the kernel zero-extends.
/// </summary>
public sealed class BpfAssembler
{
    readonly List<BpfInsn> _insns = [];
    readonly List<(int At, int Label)> _fixups = [];
    readonly List<int> _labels = [];

    public int Count => _insns.Count;

    public BpfAssembler Emit(BpfInsn insn) { _insns.Add(insn); return this; }

    /// <summary>dst = *(u32 *)(src + off).</summary>
    public BpfAssembler LoadU32(int dst, int src, short off) =>
        Emit(new((byte)(BpfOp.LDX | BpfOp.MEM | BpfOp.W), (byte)dst, (byte)src, off, 0));
    /// <summary>dst = imm (64-bit, sign-extended).</summary>
    public BpfAssembler Mov64(int dst, int imm) =>
        Emit(new((byte)(BpfOp.ALU64 | BpfOp.MOV | BpfOp.K), (byte)dst, 0, 0, imm));
    /// <summary>wdst = wsrc.</summary>
    public BpfAssembler Mov32Reg(int dst, int src) =>
        Emit(new((byte)(BpfOp.ALU | BpfOp.MOV | BpfOp.X), (byte)dst, (byte)src, 0, 0));
    /// <summary>wdst &amp;= imm.</summary>
    public BpfAssembler And32(int dst, int imm) =>
        Emit(new((byte)(BpfOp.ALU | BpfOp.AND | BpfOp.K), (byte)dst, 0, 0, imm));
    /// <summary>wdst &gt;&gt;= imm (logical).</summary>
    public BpfAssembler Rsh32(int dst, int imm) =>
        Emit(new((byte)(BpfOp.ALU | BpfOp.RSH | BpfOp.K), (byte)dst, 0, 0, imm));
    public BpfAssembler Exit() => Emit(new((byte)(BpfOp.JMP | BpfOp.EXIT), 0, 0, 0, 0));

    /// <summary>A label to jump to; place it with <see cref="Mark"/>.</summary>
    public int NewLabel() { _labels.Add(-1); return _labels.Count - 1; }
    public BpfAssembler Mark(int label)
    {
        if (_labels[label] >= 0) throw new InvalidOperationException($"label {label} is placed twice");
        _labels[label] = _insns.Count;
        return this;
    }

    /// <summary>if (dst op imm) goto label, comparing the 64-bit registers (<paramref name="op"/> from
    /// <see cref="BpfOp"/>: JEQ, JNE, JSET, ...). The immediate is sign-extended to 64 bits.</summary>
    public BpfAssembler JumpImm(int op, int dst, int imm, int label)
    {
        _fixups.Add((_insns.Count, label));
        return Emit(new((byte)(BpfOp.JMP | op | BpfOp.K), (byte)dst, 0, 0, imm));
    }

    public BpfAssembler Goto(int label)
    {
        _fixups.Add((_insns.Count, label));
        return Emit(new((byte)(BpfOp.JMP | BpfOp.JA), 0, 0, 0, 0));
    }

    /// <summary>The program with every jump resolved (offsets count from the next instruction).</summary>
    public BpfInsn[] Build()
    {
        var result = _insns.ToArray();
        foreach (var (at, label) in _fixups)
        {
            var target = _labels[label];
            if (target < 0) throw new InvalidOperationException($"label {label} is used but never placed");
            var off = target - at - 1;
            if (off is < short.MinValue or > short.MaxValue) throw new InvalidOperationException(
                $"jump at {at} to {target} is out of range");
            var i = result[at];
            result[at] = new BpfInsn(i.Code, i.Dst, i.Src, (short)off, i.Imm);
        }
        return result;
    }
}
