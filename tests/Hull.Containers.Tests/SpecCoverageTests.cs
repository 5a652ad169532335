// A test, run under the JIT: it walks the spec types by reflection, which product code (NativeAOT) must not.
#pragma warning disable IL2026, IL2057, IL2062, IL2065, IL2067, IL2070, IL2072, IL2075, IL2080, IL3050

using System.Collections;
using System.Reflection;
using System.Text.Json;
using Hull.Oci;
using Xunit;

namespace Hull.Containers.Tests;

/// <summary>
/// The spec is written by hand three times: Hull.Oci.Spec (read and written by the source-generated OciJson), the
/// fast config.json reader <see cref="SpecReader"/> and the runtime ⇄ init codec <see cref="PlanCodec"/>. These tests
/// fill every property of the types, recursively and by reflection, with a distinct non-default value, pass the
/// object through the fast path and name every property that does not come back. A property added to Spec.cs and
/// forgotten in a fast path fails here. Properties a fast path leaves out on purpose are listed with the reason.
/// </summary>
public class SpecCoverageTests
{
    /// <summary>What PlanCodec does not carry to the init, on purpose.</summary>
    static readonly Dictionary<string, string> NotInPlan = new()
    {
        ["InitPlan.Spec.Linux.Resources"] = "the runtime applies the cgroup limits before the init runs",
        ["InitPlan.Spec.Linux.IntelRdt"] = "the runtime applies it to the cgroup before the init runs",
    };

    [Fact]
    public void The_serializer_round_trips_every_property_so_the_walk_is_sound()
    {
        var spec = Filler.Fill<Spec>();
        var json = JsonSerializer.Serialize(spec, OciJson.Default.Spec);
        var back = JsonSerializer.Deserialize(json, OciJson.Default.Spec)!;
        Assert.Empty(Differ.Diff("Spec", spec, back));
        var leaves = Differ.Leaves("Spec", spec);
        Assert.True(leaves.Count > 150, $"the filler reached only {leaves.Count} properties of Spec");
    }

    [Fact]
    public void SpecReader_reads_every_property_of_the_spec()
    {
        var spec = Filler.Fill<Spec>();
        var json = JsonSerializer.SerializeToUtf8Bytes(spec, OciJson.Default.Spec);
        var fast = SpecReader.TryRead(json);
        Assert.NotNull(fast);
        var missed = Differ.Diff("Spec", spec, fast);
        Assert.True(missed.Count == 0, "SpecReader does not read back (add them to "
            + "src/Hull.Containers/Spec/SpecReader.cs):\n" + string.Join("\n", missed));
    }

    [Fact]
    public void PlanCodec_carries_every_property_of_the_plan_but_the_listed_ones()
    {
        var plan = Filler.Fill<InitPlan>();
        var back = PlanCodec.DecodePlan(PlanCodec.Encode(plan));
        var missed = Differ.Diff("InitPlan", plan, back);
        var unexpected = missed.Where(p => !NotInPlan.ContainsKey(p)).ToList();
        Assert.True(unexpected.Count == 0, "PlanCodec does not carry (add them to "
            + "src/Hull.Containers/Init/PlanCodec.cs, or list them in NotInPlan with the reason):\n"
            + string.Join("\n", unexpected));
        var stale = NotInPlan.Keys.Where(p => !missed.Contains(p)).ToList();
        Assert.True(stale.Count == 0,
            "PlanCodec now carries these; remove them from NotInPlan:\n" + string.Join("\n", stale));
    }

    [Fact]
    public void PlanCodec_carries_every_property_of_a_sync_message()
    {
        var m = Filler.Fill<SyncMessage>();
        Assert.Empty(Differ.Diff("SyncMessage", m, PlanCodec.DecodeMessage(PlanCodec.Encode(m))));
    }

    [Fact]
    public void State_json_keeps_every_property_of_the_container_record()
    {
        var r = Filler.Fill<ContainerRecord>();
        Assert.Empty(Differ.Diff("ContainerRecord", r, ContainerRecord.FromJson(r.ToJson())));
    }

    /// <summary>Builds an object with every property set, each to a value no other property has.</summary>
    sealed class Filler
    {
        int _n;

        public static T Fill<T>() where T : class => (T)new Filler().Value(typeof(T), typeof(T).Name, 0);

        object Value(Type t, string name, int depth)
        {
            var n = ++_n;
            if (Nullable.GetUnderlyingType(t) is { } u) return Value(u, name, depth);
            if (t == typeof(string)) return $"{name}-{n}";
            if (t == typeof(bool)) return true;
            if (t == typeof(int)) return 1000 + n;
            if (t == typeof(uint)) return (uint)(1000 + n);
            if (t == typeof(long)) return -(1000L + n);
            if (t == typeof(ulong)) return ulong.MaxValue - (ulong)n;
            if (t == typeof(ushort)) return (ushort)(1000 + n);
            if (t == typeof(byte[])) return new[] { (byte)n, (byte)(n + 1) };
            if (t == typeof(DateTime)) return new DateTime(2001, 2, 3, 4, 5, 6, DateTimeKind.Utc).AddSeconds(n);
            if (t.IsEnum) return Enum.GetValues(t).GetValue(Enum.GetValues(t).Length - 1)!; // not the default
            if (depth > 8) throw new InvalidOperationException($"{name}: the spec types nest deeper than expected");
            if (t.IsGenericType && t.GetGenericTypeDefinition() == typeof(List<>))
            {
                var list = (IList)Activator.CreateInstance(t)!;
                list.Add(Value(t.GetGenericArguments()[0], name, depth + 1));
                return list;
            }
            if (t.IsGenericType && t.GetGenericTypeDefinition() == typeof(Dictionary<,>))
            {
                var dict = (IDictionary)Activator.CreateInstance(t)!;
                dict.Add(Value(t.GetGenericArguments()[0], name + "-key", depth + 1),
                    Value(t.GetGenericArguments()[1], name, depth + 1));
                return dict;
            }
            if (t.IsClass && t.GetConstructor(Type.EmptyTypes) is { } ctor)
            {
                var o = ctor.Invoke(null);
                foreach (var p in Differ.Properties(t))
                {
                    var v = Value(p.PropertyType, p.Name, depth + 1);
                    if (Equals(p.GetValue(o), v))
                        throw new InvalidOperationException($"{t.Name}.{p.Name}: filled with its default");
                    p.SetValue(o, v);
                }
                return o;
            }
            throw new InvalidOperationException($"{name}: the filler does not know {t}; teach it");
        }
    }

    /// <summary>Compares two object graphs property by property; gives the paths that differ.</summary>
    static class Differ
    {
        public static IEnumerable<PropertyInfo> Properties(Type t) =>
            t.GetProperties(BindingFlags.Instance | BindingFlags.Public).Where(p => p.CanRead && p.CanWrite);

        static bool IsScalar(Type t) => t.IsPrimitive || t.IsEnum || t == typeof(string) || t == typeof(DateTime)
            || t == typeof(byte[]);

        static bool Same(object expected, object? actual) =>
            expected is byte[] a ? actual is byte[] b && a.SequenceEqual(b) : expected.Equals(actual);

        public static List<string> Diff(string path, object expected, object? actual)
        {
            var diffs = new List<string>();
            Walk(path, expected, actual, diffs, leaves: false);
            return diffs;
        }

        /// <summary>The path of every scalar property under <paramref name="o"/>.</summary>
        public static List<string> Leaves(string path, object o)
        {
            var leaves = new List<string>();
            Walk(path, o, null, leaves, leaves: true);
            return leaves;
        }

        static void Walk(string path, object? expected, object? actual, List<string> diffs, bool leaves)
        {
            if (expected is null)
            {
                if (!leaves && actual is not null) diffs.Add(path);
                return;
            }
            var t = expected.GetType();
            if (IsScalar(t))
            {
                if (leaves || !Same(expected, actual)) diffs.Add(path);
                return;
            }
            if (!leaves && actual is null) { diffs.Add(path); return; } // a whole object or list not carried
            if (expected is IDictionary d)
            {
                var other = actual as IDictionary;
                foreach (DictionaryEntry e in d)
                {
                    var value = other is not null && other.Contains(e.Key) ? other[e.Key] : null;
                    if (!leaves && value is null) diffs.Add($"{path}[{e.Key}]");
                    else Walk($"{path}[]", e.Value, value, diffs, leaves);
                }
                return;
            }
            if (expected is IList l)
            {
                var other = actual as IList;
                if (!leaves && other!.Count != l.Count) { diffs.Add($"{path}.Count"); return; }
                for (var i = 0; i < l.Count; i++)
                    Walk($"{path}[]", l[i], other?[i], diffs, leaves);
                return;
            }
            foreach (var p in Properties(t))
            {
                var other = actual is null ? null : p.GetValue(actual);
                Walk($"{path}.{p.Name}", p.GetValue(expected), other, diffs, leaves);
            }
        }
    }
}
