using Native.PageTable;
using Native.SfBufNative;
using Native.SfBufNative.Kernel;

namespace Native.Perf.Paper;

/// <summary>
/// sendfile of a file that fits the sf_buf pool (hot) or is twice its size (cold) to a socket
/// whose NIC runs on another CPU; the page cache is warm and one pass runs before the
/// measurement, so the hot case measures the steady state. The short forms of the cold case send
/// the first half of the file once: one pool's worth of pages, none of them still mapped after the
/// warm-up pass, which left the second half in the pool.
/// <para>
/// Every-CPU form (<see cref="LoadForm.All"/>): N/2 connections, each a sender on CPU 2k with its
/// own socket and NIC thread on CPU 2k + 1 (on one CPU both on CPU 0), sending the paper form's
/// total bytes between them. Each connection has a file of its own, a share of the paper form's:
/// hot, a share of its 4 MiB, so that the files together still fit the pool; cold, two halves of
/// a share of the pool each (rounded up to a page), so that the first halves together, and the
/// second, are at least the pool. Memory is then the paper form's at any CPU count, and the work
/// too: one shared file would need a whole pass per connection (512 MiB of hot sends at 256 CPUs
/// where the short form sends 16), and a paper-size file per connection 128 times the pages (4.5
/// GiB cold, on a machine of 512 MiB).
/// </para>
/// <para>
/// Cold keeps "no page still mapped when it comes round" in aggregate: the page-in and the
/// warm-up pass (on CPU 0, through a socket of its own) go through every first half, then every
/// second half, so that the pool is left holding second halves only, as the paper form's is;
/// then the connections send their halves in turns (one in the short forms), each turn drained
/// everywhere before the next begins, each a pool's worth of new mappings. A cache that recycles
/// CPU by CPU (<see cref="SfBufStrategyInfo.RecyclesPerCpu"/>) is LRU only approximately when
/// every CPU misses (epoch-cache: 92 of 4608 pages hit in the short form at 256 CPUs, 13,680 of
/// 73,728 in the full form's 16 turns at 16 CPUs), so there its relation is that each page is one
/// hit or one miss.
/// </para>
/// </summary>
internal sealed class SendfileExperiment(bool hot) : Experiment
{
    public override string Name => hot ? "sendfile-hot" : "sendfile-cold";

    public override string Workload => hot
        ? "sendfile of a file that fits the pool, to a NIC thread on the other CPU (shared mappings)"
        : "sendfile of a file twice the pool's size, to a NIC thread on the other CPU (shared mappings)";

    public override string Baseline =>
        "sendfile's own pool before sf_buf (`uipc_syscalls.c` `sf_buf_alloc`/`sf_buf_free`, 1998-2003): nsfbufs buffers with a fixed page of KVA each, `pmap_qenter` at alloc, `pmap_qremove` at free";

    public override bool HasAllCpuForm => true;

    public override IReadOnlyList<Measurement> Run(Trial t) => t.Load == LoadForm.All ? RunPairs(t) : RunOne(t);

    /// <summary>The paper form's file size.</summary>
    private long FileBytes(Trial t) => hot ? Math.Min(4L << 20, Nsfbufs(t) * (long)Pte.PageSize / 2) : 2L * Nsfbufs(t) * Pte.PageSize;

    /// <summary>The paper form's total bytes sent.</summary>
    private long TotalBytes(Trial t, long fileBytes) => hot ? t.Pick(1L << 30, 16L << 20, 2 * fileBytes) : t.Pick(8 * fileBytes, fileBytes / 2, fileBytes / 2);

    private IReadOnlyList<Measurement> RunOne(Trial t)
    {
        var m = t.Machine;
        long fileBytes = FileBytes(t);
        long total = TotalBytes(t, fileBytes);
        var contents = new byte[fileBytes];
        new Random(42).NextBytes(contents);
        var file = t.Kernel.FileSystem.AddFile(hot ? "hot" : "cold", contents);
        Socket so = null!;
        Nic nic = null!;
        m.Run(0, () =>
        {
            so = new Socket(t.Kernel);
            nic = Nic.Start(t.Kernel, so, t.PeerCpu);
            PageIn(t, m.KernelMemory.Alloc(Chunk), file, 0, fileBytes);
            Check(Sendfile.Send(t.Kernel, file, so, 0, fileBytes, default, out _), "warm-up sendfile");
            Check(so.WaitDrained(), "drain");
        });

        t.Begin();
        var sender = m.StartThread("sendfile", () =>
        {
            for (long sent = 0; sent < total; sent += fileBytes)
            {
                long length = Math.Min(fileBytes, total - sent);
                Check(Sendfile.Send(t.Kernel, file, so, 0, length, default, out long n), "sendfile");
                Require(n == length, "short sendfile");
            }

            Check(so.WaitDrained(), "drain");
        }, cpu: 0, bound: true);
        Trial.JoinAll(sender);
        t.End();
        nic.Stop();
        nic.Join(TimeSpan.FromMinutes(1));
        return [t.Measure(Name, total, total / Pte.PageSize, new Dictionary<string, object>
        {
            ["file_bytes"] = fileBytes,
            ["nsfbufs"] = Nsfbufs(t),
        })];
    }

    /// <summary>
    /// Every CPU works: one connection (sender, socket, NIC thread) per pair of CPUs, each with
    /// its own share of the paper form's file, the paper form's total bytes between them.
    /// </summary>
    private List<Measurement> RunPairs(Trial t)
    {
        var m = t.Machine;
        int pairs = Math.Max(1, t.Cpus / 2);
        long paperFile = FileBytes(t), paperTotal = TotalBytes(t, paperFile);
        long fileBytes, perPair;
        if (hot)
        {
            // A share of the 4 MiB each (whole pages), each pair at least one pass of its file.
            fileBytes = Math.Max(1, paperFile / Pte.PageSize / pairs) * Pte.PageSize;
            perPair = Math.Max(fileBytes, paperTotal / pairs / Pte.PageSize * Pte.PageSize);
        }
        else
        {
            // Each half a share of the pool, rounded up: the halves together are at least the
            // pool, so a turn through them leaves no page of the turn before it mapped. A pair
            // sends as many halves as the paper form sends half files (one in the short forms).
            long half = (Nsfbufs(t) + pairs - 1) / pairs * (long)Pte.PageSize;
            fileBytes = 2 * half;
            perPair = paperTotal / (paperFile / 2) * half;
        }

        var random = new Random(42);
        var files = new Vnode[pairs];
        for (int p = 0; p < pairs; p++)
        {
            var contents = new byte[fileBytes];
            random.NextBytes(contents);
            files[p] = t.Kernel.FileSystem.AddFile($"{(hot ? "hot" : "cold")}-{p}", contents);
        }

        // Hot sends each whole file; cold the first halves, then the second halves (see the class).
        long part = hot ? fileBytes : fileBytes / 2;
        var sockets = new Socket[pairs];
        var nics = new Nic[pairs];
        m.Run(0, () =>
        {
            var sink = m.KernelMemory.Alloc(Chunk);
            for (long offset = 0; offset < fileBytes; offset += part)
            {
                foreach (var file in files)
                {
                    PageIn(t, sink, file, offset, part);
                }
            }

            // The warm-up goes through one socket of its own, whose NIC is stopped and joined
            // here, and the connections' NICs start after it: in virtual time every sleeping
            // thread is looked at on every step (128 idle NICs made the warm-up 3 times slower).
            var warm = new Socket(t.Kernel);
            var warmNic = Nic.Start(t.Kernel, warm, t.PeerCpu);
            for (long offset = 0; offset < fileBytes; offset += part)
            {
                foreach (var file in files)
                {
                    Check(Sendfile.Send(t.Kernel, file, warm, offset, part, default, out _), "warm-up sendfile");
                }
            }

            Check(warm.WaitDrained(), "drain");
            warmNic.Stop();
            warmNic.Join(TimeSpan.FromMinutes(1));

            int asleep = m.SleepingThreads;
            for (int p = 0; p < pairs; p++)
            {
                sockets[p] = new Socket(t.Kernel);
                nics[p] = Nic.Start(t.Kernel, sockets[p], t.Cpus == 1 ? 0 : (2 * p) + 1);
            }

            // Every NIC asleep on its empty socket before this thread ends: in virtual time the
            // senders may be started from outside only while no thread runs.
            while (m.SleepingThreads < asleep + pairs)
            {
                m.Sleep(nics, timeout: TimeSpan.FromMicroseconds(10));
            }
        });

        var turns = new Turns(m, pairs);
        t.Begin();
        var senders = new KernelThread[pairs];
        for (int p = 0; p < pairs; p++)
        {
            int pair = p;
            senders[p] = m.StartThread($"sendfile {pair}", () =>
            {
                var so = sockets[pair];
                long offset = 0;
                for (long sent = 0; sent < perPair;)
                {
                    long length = Math.Min(part, perPair - sent);
                    Check(Sendfile.Send(t.Kernel, files[pair], so, offset, length, default, out long n), "sendfile");
                    Require(n == length, "short sendfile");
                    sent += length;
                    offset = (offset + part) % fileBytes;
                    if (!hot && sent < perPair)
                    {
                        // Cold: every connection's half is transmitted before any sends its next.
                        Check(so.WaitDrained(), "drain");
                        turns.Arrive();
                    }
                }

                // Told to stop once its queue is empty, the NIC exits as it transmits the last
                // byte: the window ends with every thread ended, since in virtual time a NIC still
                // on its way to sleep would be running while the end is read from outside.
                nics[pair].Stop();
            }, cpu: t.Cpus == 1 ? 0 : 2 * pair, bound: true);
        }

        Trial.JoinAll([.. senders, .. nics.Select(n => n.Thread)]);
        t.End();
        long total = perPair * pairs;
        long transmitted = nics.Sum(n => n.Bytes);
        Require(transmitted == total, $"the NICs transmitted {transmitted} of {total} bytes");
        return [t.Measure(Name, total, total / Pte.PageSize, new Dictionary<string, object>
        {
            ["file_bytes"] = fileBytes,
            ["nsfbufs"] = Nsfbufs(t),
            ["pairs"] = pairs,
        })];
    }

    /// <summary>Reads <paramref name="length"/> bytes of <paramref name="file"/> from <paramref name="offset"/> into the page cache, through a <see cref="Experiment.Chunk"/>-byte kernel buffer at <paramref name="sink"/>.</summary>
    private static void PageIn(Trial t, ulong sink, Vnode file, long offset, long length)
    {
        for (long off = offset; off < offset + length; off += Chunk)
        {
            int n = (int)Math.Min(Chunk, offset + length - off);
            Check(VnodePager.Read(t.Kernel, file, new Uio(sink, n, UioSegment.SystemSpace, UioDirection.Read, off)), "page-in");
        }
    }

    public override IEnumerable<string> Relations(Measurement m)
    {
        long pages = m.Bytes / Pte.PageSize;
        if (MapsPerUse(m))
        {
            return Expect(m["mappings"] == pages, $"{m["mappings"]} pool mappings for {pages} pages sent (one each)");
        }

        if (!CachesSharedMappings(m))
        {
            return [];
        }

        // Hot: every page is still cached from the warm-up pass; cold: the file cycles through twice the pool.
        if (hot)
        {
            return Expect(m["mappings"] == 0 && m["shootdowns"] == 0, $"hot sendfile made {m["mappings"]} mappings and {m["shootdowns"]} shootdowns (expected none)");
        }

        // With many CPUs missing at once, a cache that recycles CPU by CPU may still hold a page
        // when it comes round: then each page is still one hit or one miss, and a miss one mapping.
        if (m.Load == PaperRow.AllLoad && SfBufMapper.Describe(m.Strategy).RecyclesPerCpu)
        {
            return Expect(m["mappings"] == m["sfbuf_misses"] && m["sfbuf_misses"] + m["sfbuf_hits"] == pages,
                $"{m["mappings"]} mappings, {m["sfbuf_misses"]} misses and {m["sfbuf_hits"]} hits for {pages} pages (one hit or miss each, one mapping a miss)");
        }

        return Expect(m["mappings"] == pages, $"{m["mappings"]} mappings for {pages} pages of a file twice the pool (each should miss)");
    }

    /// <summary>
    /// The cold every-CPU form's turns: a barrier of kernel threads (the last of the senders to
    /// arrive wakes the others), so that no connection sends its next half while another's last
    /// one is still being sent.
    /// </summary>
    private sealed class Turns(Machine machine, int parties)
    {
        private readonly KMutex _mtx = new("sendfile turns");
        private int _arrived;
        private long _turn;

        public void Arrive()
        {
            _mtx.Lock();
            long turn = _turn;
            if (++_arrived == parties)
            {
                _arrived = 0;
                _turn++;
                machine.Wakeup(this);
            }
            else
            {
                while (_turn == turn)
                {
                    machine.Sleep(this, _mtx);
                }
            }

            _mtx.Unlock();
        }
    }
}
