using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;
using Hull.Linux;
using Hull.TestSupport;
using Xunit;

namespace Hull.Linux.Tests;

/// <summary>
/// Spawner.NativeSpawn mirrors struct hull_spawn (native/hull_spawn.h) by hand. This compiles a small C program
/// against the header that prints sizeof and every field's offsetof and size, and compares them with the C# struct
/// (Marshal.OffsetOf, RuntimeHelpers.SizeOf): a field added, removed, reordered or resized on one side only fails
/// here, by name. Needs gcc.
/// </summary>
public partial class NativeSpawnLayoutTests
{
    static string Header => Path.Combine(Repo.Root, "native", "hull_spawn.h");

    const DynamicallyAccessedMemberTypes AllFields =
        DynamicallyAccessedMemberTypes.PublicFields | DynamicallyAccessedMemberTypes.NonPublicFields;

    [DynamicallyAccessedMembers(AllFields)]
    static readonly Type Managed = typeof(Spawner).GetNestedType("NativeSpawn", BindingFlags.NonPublic)
        ?? throw new InvalidOperationException("Spawner.NativeSpawn is gone: update this test");

    /// <summary>The field names of struct hull_spawn, in order (declarations like "int32_t a, b[4];" too).</summary>
    static List<string> CFields(string header)
    {
        var text = CommentRegex().Replace(File.ReadAllText(header), " ");
        var m = StructRegex().Match(text);
        Assert.True(m.Success, $"no 'struct hull_spawn {{ ... }};' in {header}");
        var names = new List<string>();
        var decls = m.Groups[1].Value.Split(';',
            StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        foreach (var decl in decls)
            foreach (var declarator in decl.Split(','))
            {
                var d = NameRegex().Match(declarator.Trim());
                Assert.True(d.Success, $"cannot read the declaration '{decl}' in {header}");
                names.Add(d.Groups[1].Value);
            }
        return names;
    }

    /// <summary>name → (offset, size) as gcc lays the struct out, plus "sizeof" → (size, size).</summary>
    static Dictionary<string, (long Offset, long Size)> CLayout(List<string> fields)
    {
        Requires.File("/usr/bin/gcc", "gcc");
        using var dir = new TempDir("hull-layout");
        var src = new StringBuilder();
        src.Append($"#include <stdio.h>\n#include <stddef.h>\n#include \"{Header}\"\nint main(void) {{\n");
        src.Append("    printf(\"sizeof %zu %zu\\n\", sizeof(struct hull_spawn), sizeof(struct hull_spawn));\n");
        foreach (var f in fields)
            src.Append($"    printf(\"{f} %zu %zu\\n\", offsetof(struct hull_spawn, {f}), " +
                       $"sizeof(((struct hull_spawn *)0)->{f}));\n");
        src.Append("    return 0;\n}\n");
        var c = Path.Combine(dir.Path, "layout.c");
        var exe = Path.Combine(dir.Path, "layout");
        File.WriteAllText(c, src.ToString());
        var (code, _, err) = Run("gcc", "-Wall", "-Werror", "-o", exe, c);
        Assert.True(code == 0, $"gcc failed on a program including {Header}: {err}");
        var (rc, output, _) = Run(exe);
        Assert.Equal(0, rc);
        return output.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.Split(' '))
            .ToDictionary(p => p[0], p => (long.Parse(p[1]), long.Parse(p[2])));
    }

    static (int Code, string Out, string Err) Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output, err.Result);
    }

    /// <summary>"clone_flags" and "CloneFlags" (and "sigmask" and "SigMask") name the same field.</summary>
    static string Key(string name) => name.Replace("_", "").ToLowerInvariant();

    static long ManagedSize(FieldInfo f) =>
        f.FieldType.IsPointer ? IntPtr.Size : RuntimeHelpers.SizeOf(f.FieldType.TypeHandle); // fixed buffers too

    [Fact]
    public void NativeSpawn_has_the_size_and_every_field_offset_of_struct_hull_spawn()
    {
        var cFields = CFields(Header);
        var c = CLayout(cFields);
        var managed = Managed.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic)
            .OrderBy(f => (long)Marshal.OffsetOf(Managed, f.Name)).ToList();

        var problems = new List<string>();
        var cKeys = cFields.Select(Key).ToList();
        var mKeys = managed.Select(f => Key(f.Name)).ToList();
        foreach (var f in cFields.Where(f => !mKeys.Contains(Key(f))))
            problems.Add($"struct hull_spawn.{f} has no field in NativeSpawn");
        foreach (var f in managed.Where(f => !cKeys.Contains(Key(f.Name))))
            problems.Add($"NativeSpawn.{f.Name} has no field in struct hull_spawn");
        foreach (var f in managed)
        {
            var name = cFields.FirstOrDefault(n => Key(n) == Key(f.Name));
            if (name is null) continue;
            var (offset, size) = c[name];
            var mOffset = (long)Marshal.OffsetOf(Managed, f.Name);
            var mSize = ManagedSize(f);
            if (mOffset != offset || mSize != size)
                problems.Add($"{name}: C offset {offset} size {size}, " +
                             $"NativeSpawn.{f.Name} offset {mOffset} size {mSize}");
        }
        if (cKeys.Intersect(mKeys).Count() == cKeys.Count && !cKeys.SequenceEqual(mKeys))
            problems.Add($"the fields are in another order: C {string.Join(",", cFields)}; " +
                         $"C# {string.Join(",", managed.Select(f => f.Name))}");
        var sizeofC = c["sizeof"].Offset;
        var sizeofManaged = RuntimeHelpers.SizeOf(Managed.TypeHandle);
        if (sizeofC != sizeofManaged)
            problems.Add($"sizeof(struct hull_spawn) is {sizeofC}, sizeof(NativeSpawn) is {sizeofManaged}");
        Assert.True(problems.Count == 0, "NativeSpawn and struct hull_spawn differ:\n" + string.Join("\n", problems));
    }

    [Fact]
    public void SpawnStage_lists_the_stages_of_hull_spawn_h()
    {
        var header = File.ReadAllText(Header);
        var c = StageRegex().Matches(header).Select(m => int.Parse(m.Groups[1].Value)).Order().ToList();
        Assert.NotEmpty(c);
        var managed = Enum.GetValues<SpawnStage>()
            .Where(s => s is not SpawnStage.Unknown and not SpawnStage.Clone) // set by the parent side, not the child
            .Select(s => (int)s).Order().ToList();
        Assert.Equal(c, managed);
    }

    [GeneratedRegex(@"/\*.*?\*/", RegexOptions.Singleline)]
    private static partial Regex CommentRegex();

    [GeneratedRegex(@"struct\s+hull_spawn\s*\{(.*?)\}\s*;", RegexOptions.Singleline)]
    private static partial Regex StructRegex();

    [GeneratedRegex(@"(\w+)\s*(\[[^\]]*\])?$")]
    private static partial Regex NameRegex();

    [GeneratedRegex(@"\bST_\w+\s*=\s*(\d+)")]
    private static partial Regex StageRegex();
}
