using Hull.Linux.Bpf;

namespace Hull.Cgroups.Tests;

/// <summary>
/// An interpreter for the eBPF instructions the device program uses (LDX W, ALU/ALU64 MOV/AND/RSH/OR, JMP/JMP32
/// JA/JEQ/JNE/JSET/JGT/JGE/JLT/JLE, EXIT), with the checks the kernel's verifier would make that matter here:
/// registers are read only after being written, r1 is the context and only 4-byte loads inside it are allowed,
/// jumps go forward and stay inside the program, r0 is set at exit. Anything else throws.
/// </summary>
static class EbpfInterpreter
{
    const ulong CtxMarker = 0xC7C7_0000_0000_0000;

    /// <summary>Runs the program on a struct bpf_cgroup_dev_ctx; returns r0 and the number of instructions
    /// run.</summary>
    public static (ulong R0, int Steps) Run(BpfInsn[] prog, uint accessType, uint major, uint minor)
    {
        var ctx = new uint[] { accessType, major, minor };
        var r = new ulong[11];
        var init = new bool[11];
        r[1] = CtxMarker; init[1] = true;
        var pc = 0;
        var steps = 0;
        while (true)
        {
            if (pc < 0 || pc >= prog.Length) throw new InvalidOperationException($"pc {pc} outside the program");
            var i = prog[pc++];
            steps++;
            int cls = i.Code & 0x07, op = i.Code & 0xf0;
            var x = (i.Code & BpfOp.X) != 0;
            if (i.Dst > 10 || i.Src > 10) throw new InvalidOperationException($"bad register in {i}");
            ulong Src() { if (!init[i.Src]) throw new InvalidOperationException(
                $"r{i.Src} read before write at {pc - 1}"); return r[i.Src]; }
            ulong Dst() { if (!init[i.Dst]) throw new InvalidOperationException(
                $"r{i.Dst} read before write at {pc - 1}"); return r[i.Dst]; }
            switch (cls)
            {
                case BpfOp.LDX:
                    if (i.Code != (BpfOp.LDX | BpfOp.MEM | BpfOp.W)) throw new InvalidOperationException(
                        $"unsupported load {i}");
                    if (Src() != CtxMarker) throw new InvalidOperationException(
                        $"load from a non-context pointer at {pc - 1}");
                    if (i.Off is < 0 or > 8 || i.Off % 4 != 0) throw new InvalidOperationException(
                        $"context access at offset {i.Off}");
                    if (i.Dst == 10) throw new InvalidOperationException("write to r10");
                    r[i.Dst] = ctx[i.Off / 4]; init[i.Dst] = true;
                    break;
                case BpfOp.ALU or BpfOp.ALU64:
                {
                    if (i.Dst == 10) throw new InvalidOperationException("write to r10");
                    var w = cls == BpfOp.ALU;
                    ulong b = x ? Src() : (ulong)(long)i.Imm;
                    ulong a = op == BpfOp.MOV ? 0 : Dst();
                    if (w) { a = (uint)a; b = (uint)b; }
                    if (r[i.Dst] == CtxMarker && op != BpfOp.MOV) throw new InvalidOperationException(
                        "arithmetic on the context pointer");
                    ulong v = op switch
                    {
                        BpfOp.MOV => b, BpfOp.AND => a & b, BpfOp.OR => a | b,
                        BpfOp.RSH => w ? (uint)a >> (int)(b & 31) : a >> (int)(b & 63),
                        _ => throw new InvalidOperationException($"unsupported ALU op {i}"),
                    };
                    r[i.Dst] = w ? (uint)v : v; init[i.Dst] = true;
                    break;
                }
                case BpfOp.JMP or BpfOp.JMP32:
                {
                    if (op == BpfOp.EXIT)
                    {
                        if (cls != BpfOp.JMP) throw new InvalidOperationException("exit in JMP32");
                        if (!init[0]) throw new InvalidOperationException("r0 not set at exit");
                        return (r[0], steps);
                    }
                    if (i.Off < 0) throw new InvalidOperationException($"backward jump at {pc - 1}");
                    if (op == BpfOp.JA) { pc += i.Off; break; }
                    var w = cls == BpfOp.JMP32;
                    ulong a = Dst(), b = x ? Src() : (ulong)(long)i.Imm;
                    if (w) { a = (uint)a; b = (uint)b; }
                    bool t = op switch
                    {
                        BpfOp.JEQ => a == b, BpfOp.JNE => a != b, BpfOp.JSET => (a & b) != 0, BpfOp.JGT => a > b,
                        BpfOp.JGE => a >= b, BpfOp.JLT => a < b, BpfOp.JLE => a <= b,
                        _ => throw new InvalidOperationException($"unsupported jump {i}"),
                    };
                    if (t) pc += i.Off;
                    break;
                }
                default: throw new InvalidOperationException($"unsupported instruction class {i}");
            }
        }
    }

    /// <summary>The program's decision for (type 'b'/'c', major, minor, access "rwm" subset).</summary>
    public static bool Allows(BpfInsn[] prog, char type, uint major, uint minor, string access)
    {
        var acc = (uint)DeviceFilter.AccessBits(access);
        var t = type == 'b' ? (uint)BpfConst.DEVCG_DEV_BLOCK : (uint)BpfConst.DEVCG_DEV_CHAR;
        var (r0, _) = Run(prog, (acc << 16) | t, major, minor);
        return r0 switch { 1 => true, 0 => false, _ => throw new InvalidOperationException($"r0 = {r0}") };
    }
}
