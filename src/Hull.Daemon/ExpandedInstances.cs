namespace Hull.Daemon;

/// <summary>
/// The instances with their profiles applied, kept in memory for the code that reads all of them on every start and
/// stop (addresses taken on a network, DNS, published ports): reading and expanding every record from the store each
/// time made a launch cost grow with the number of instances. The store says which records changed (an instance's
/// write marks it; a profile's write marks all), and only those are read again, at the next read.
/// Invariant: an entry is marked after its write has committed, so a read never keeps a record older than the last
/// write it could have seen. The records handed out are shared: read them, never change them.
/// </summary>
public sealed class ExpandedInstances
{
    public sealed record Entry(InstanceRecord Record, Dictionary<string, Dictionary<string, string>> Devices);

    readonly Lock _lock = new();
    readonly SortedDictionary<string, Entry> _byName = new(StringComparer.Ordinal);
    readonly HashSet<string> _stale = new(StringComparer.Ordinal);
    bool _allStale = true;

    /// <summary>Called by the store after a write: <paramref name="instance"/> changed, or, if null, any may have.
    /// </summary>
    public void MarkStale(string? instance)
    {
        lock (_lock)
        {
            if (instance is null) _allStale = true;
            else _stale.Add(instance);
        }
    }

    /// <summary>Every instance, in name order, with the records changed since the last call read again.</summary>
    /// <param name="all">reads every record from the store</param>
    /// <param name="one">reads one record (null if it is gone)</param>
    /// <param name="expand">an instance's devices with its profiles applied</param>
    public List<Entry> All(Func<List<InstanceRecord>> all, Func<string, InstanceRecord?> one,
        Func<InstanceRecord, Dictionary<string, Dictionary<string, string>>> expand)
    {
        lock (_lock)
        {
            if (_allStale)
            {
                _allStale = false;
                _stale.Clear();
                _byName.Clear();
                foreach (var r in all()) _byName[r.Name] = new Entry(r, expand(r));
            }
            else if (_stale.Count > 0)
            {
                foreach (var name in _stale)
                    if (one(name) is { } r) _byName[name] = new Entry(r, expand(r));
                    else _byName.Remove(name);
                _stale.Clear();
            }
            return [.. _byName.Values];
        }
    }
}
