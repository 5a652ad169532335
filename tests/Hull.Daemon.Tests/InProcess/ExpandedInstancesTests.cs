using Xunit;

namespace Hull.Daemon.Tests.InProcess;

/// <summary>The in-memory view of expanded instances follows every write to the store, and reads again only what
/// changed.</summary>
public sealed class ExpandedInstancesTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("hull-expanded-").FullName;
    readonly Store _store;
    readonly ExpandedInstances _view = new();
    int _fullReads, _oneReads;

    public ExpandedInstancesTests()
    {
        _store = new Store(Path.Combine(_dir, "hull.db"));
        _store.InstanceChanged += _view.MarkStale;
    }

    public void Dispose()
    {
        _store.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    List<ExpandedInstances.Entry> All() => _view.All(
        () => { _fullReads++; return _store.ListInstances(); },
        n => { _oneReads++; return _store.GetInstance(n); },
        r => r.Devices.ToDictionary(d => d.Key, d => new Dictionary<string, string>(d.Value) { ["seen"] = "yes" }));

    static InstanceRecord Record(string name, string network) => new()
    {
        Name = name, Devices = new() { ["eth0"] = new() { ["type"] = "nic", ["network"] = network } },
    };

    [Fact]
    public void Reads_everything_once_then_only_what_a_write_changed()
    {
        _store.InsertInstance(Record("a", "n1"));
        _store.InsertInstance(Record("b", "n1"));
        Assert.Equal(["a", "b"], All().Select(e => e.Record.Name));
        Assert.Equal("yes", All()[0].Devices["eth0"]["seen"]);
        Assert.Equal((1, 0), (_fullReads, _oneReads));

        var a = _store.GetInstance("a")!;
        a.Devices["eth0"]["network"] = "n2";
        _store.UpdateInstance(a);
        Assert.Equal("n2", All().Single(e => e.Record.Name == "a").Devices["eth0"]["network"]);
        Assert.Equal((1, 1), (_fullReads, _oneReads));

        _store.DeleteInstance("b");
        _store.RenameInstance("a", "c");
        Assert.Equal(["c"], All().Select(e => e.Record.Name));
        Assert.Equal(1, _fullReads);

        // A profile's write may change any instance's expanded devices: all are read again.
        _store.InsertProfile(new ProfileRecord { Name = "p" });
        All();
        Assert.Equal(2, _fullReads);
    }
}
