using Hull.Seccomp;

namespace Hull.Seccomp.Tests;

/// <summary>struct seccomp_data as the kernel fills it for the filter.</summary>
public sealed record SeccompData(uint Nr, uint Arch, ulong InstructionPointer = 0, params ulong[] Args)
{
    public uint Word(uint offset)
    {
        if (offset % 4 != 0 || offset >= 64) throw new InvalidOperationException(
            $"misaligned or out-of-range load at {offset}");
        if (offset == 0) return Nr;
        if (offset == 4) return Arch;
        if (offset == 8) return (uint)InstructionPointer;
        if (offset == 12) return (uint)(InstructionPointer >> 32);
        var i = (int)(offset - 16) / 8;
        var a = i < Args.Length ? Args[i] : 0;
        return (offset - 16) % 8 == 0 ? (uint)a : (uint)(a >> 32);
    }
}

/// <summary>
/// A classic BPF interpreter with the seccomp subset the kernel accepts (ld [k] word loads from seccomp_data, and with
/// a constant, ja/jeq/jgt/jge/jset with a constant, ret k), plus the kernel's static checks (forward jumps inside the
/// program, the last instruction a ret, at most 4096 instructions).
/// </summary>
public static class BpfInterpreter
{
    public static void Check(SockFilter[] prog)
    {
        if (prog.Length is 0 or > Bpf.MaxInstructions) throw new InvalidOperationException(
            $"program length {prog.Length}");
        if ((prog[^1].Code & 0x07) != Bpf.RET) throw new InvalidOperationException("the last instruction is not a ret");
        for (var pc = 0; pc < prog.Length; pc++)
        {
            var ins = prog[pc];
            switch (ins.Code)
            {
                case Bpf.LD | Bpf.W | Bpf.ABS:
                    if (ins.K % 4 != 0 || ins.K >= 64) throw new InvalidOperationException(
                        $"{pc}: bad load offset {ins.K}");
                    break;
                case Bpf.ALU | Bpf.AND | Bpf.K:
                case Bpf.RET | Bpf.K:
                    break;
                case Bpf.JMP | Bpf.JA:
                    if (pc + 1 + (long)ins.K >= prog.Length) throw new InvalidOperationException(
                        $"{pc}: ja out of the program");
                    break;
                case Bpf.JMP | Bpf.JEQ | Bpf.K:
                case Bpf.JMP | Bpf.JGT | Bpf.K:
                case Bpf.JMP | Bpf.JGE | Bpf.K:
                case Bpf.JMP | Bpf.JSET | Bpf.K:
                    if (pc + 1 + ins.Jt >= prog.Length || pc + 1
                        + ins.Jf >= prog.Length) throw new InvalidOperationException($"{pc}: jump out of the program");
                    break;
                default:
                    throw new InvalidOperationException(
                        $"{pc}: opcode 0x{ins.Code:x} is not allowed in a seccomp filter");
            }
        }
    }

    /// <summary>Runs the program; returns the seccomp return value and how many instructions were executed.</summary>
    public static (uint Ret, int Steps) Run(SockFilter[] prog, SeccompData data)
    {
        uint a = 0;
        var pc = 0;
        var steps = 0;
        while (true)
        {
            if (pc >= prog.Length) throw new InvalidOperationException("ran off the end of the program");
            var ins = prog[pc];
            steps++;
            switch (ins.Code)
            {
                case Bpf.LD | Bpf.W | Bpf.ABS: a = data.Word(ins.K); pc++; break;
                case Bpf.ALU | Bpf.AND | Bpf.K: a &= ins.K; pc++; break;
                case Bpf.RET | Bpf.K: return (ins.K, steps);
                case Bpf.JMP | Bpf.JA: pc += 1 + (int)ins.K; break;
                case Bpf.JMP | Bpf.JEQ | Bpf.K: pc += 1 + (a == ins.K ? ins.Jt : ins.Jf); break;
                case Bpf.JMP | Bpf.JGT | Bpf.K: pc += 1 + (a > ins.K ? ins.Jt : ins.Jf); break;
                case Bpf.JMP | Bpf.JGE | Bpf.K: pc += 1 + (a >= ins.K ? ins.Jt : ins.Jf); break;
                case Bpf.JMP | Bpf.JSET | Bpf.K: pc += 1 + ((a & ins.K) != 0 ? ins.Jt : ins.Jf); break;
                default: throw new InvalidOperationException($"{pc}: opcode 0x{ins.Code:x}");
            }
        }
    }
}
