using Hull.Cgroups;
using Hull.Oci;
using Xunit;

namespace Hull.Cgroups.Tests;

public class DeviceRuleTests
{
    static DeviceCgroup R(bool allow, string? type = null, long? major = null, long? minor = null,
        string? access = null) =>
        new() { Allow = allow, Type = type, Major = major, Minor = minor, Access = access };

    [Fact]
    public void Deny_all_then_allow_some_gives_an_allowlist()
    {
        var s = DeviceRuleSet.Compile([R(false), R(true, "c", 1, 3, "rwm"), R(true, "c", 1, 5, "r"),
            R(true, "c", 1, 5, "w"), R(true, "c", 136, null, "rw")]);
        Assert.False(s.DefaultAllow);
        Assert.Equal(["c 1:3 rwm", "c 1:5 rw", "c 136:* rw"], s.Exceptions.Select(e => e.ToV1()));
        Assert.True(s.IsAllowed('c', 1, 3, "rw"));
        Assert.True(s.IsAllowed('c', 136, 7, "w"));
        Assert.False(s.IsAllowed('c', 136, 7, "m"));
        Assert.False(s.IsAllowed('b', 8, 0, "r"));
        Assert.False(s.IsAllowed('c', 1, 5, "m"));
    }

    [Fact]
    public void Later_rules_take_access_away_and_a_full_wildcard_resets()
    {
        var s = DeviceRuleSet.Compile([R(false), R(true, "c", 1, 3, "rwm"), R(false, "c", 1, 3, "w")]);
        Assert.Equal(["c 1:3 rm"], s.Exceptions.Select(e => e.ToV1()));
        var reset = DeviceRuleSet.Compile([R(false), R(true, "c", 1, 3), R(true, "a")]);
        Assert.True(reset.DefaultAllow);
        Assert.Empty(reset.Exceptions);
        var denyOne = DeviceRuleSet.Compile([R(false, "b", 8, null, "w")]);
        Assert.True(denyOne.DefaultAllow);
        Assert.False(denyOne.IsAllowed('b', 8, 16, "rw"));
        Assert.True(denyOne.IsAllowed('b', 8, 16, "r"));
        Assert.True(denyOne.IsAllowed('c', 8, 16, "rw"));
    }

    [Fact]
    public void Type_a_with_numbers_means_both_block_and_char()
    {
        var s = DeviceRuleSet.Compile([R(false), R(true, "a", 7, null, "r")]);
        Assert.Equal(["b 7:* r", "c 7:* r"], s.Exceptions.Select(e => e.ToV1()));
    }

    [Theory]
    [InlineData("x", "rwm", "type")]
    [InlineData("c", "rwx", "access")]
    [InlineData("c", "rr", "access")]
    public void Rejects_bad_rules(string type, string access, string what)
    {
        var e = Assert.Throws<CgroupException>(() => DeviceRuleSet.Compile([R(true, type, 1, 1, access)]));
        Assert.Contains(what, e.Message);
        Assert.Contains("devices[0]", e.Message);
    }

    [Fact]
    public void Parses_v1_devices_list()
    {
        Assert.True(DeviceRuleSet.ParseV1List("a *:* rwm\n").DefaultAllow);
        var s = DeviceRuleSet.ParseV1List("c 1:3 rwm\nc 136:* rw\n");
        Assert.False(s.DefaultAllow);
        Assert.True(s.SameAs(DeviceRuleSet.Compile([R(false), R(true, "c", 136, null, "rw"), R(true, "c", 1, 3)])));
    }
}
