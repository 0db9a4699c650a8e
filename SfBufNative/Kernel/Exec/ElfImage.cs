using System.Buffers.Binary;
using Native.PageTable;

namespace Native.SfBufNative.Kernel;

/// <summary>
/// One program header (<c>Elf64_Phdr</c>), as stored in the image.
/// </summary>
/// <param name="Type"><c>p_type</c> (<see cref="ElfImage.PT_LOAD"/>, ...).</param>
/// <param name="Flags"><c>p_flags</c> (<see cref="ElfImage.PF_X"/>, <see cref="ElfImage.PF_W"/>, <see cref="ElfImage.PF_R"/>).</param>
/// <param name="Offset"><c>p_offset</c>: where the segment's bytes start in the file.</param>
/// <param name="VirtualAddress"><c>p_vaddr</c>: where it goes, before relocation of a PIE.</param>
/// <param name="FileSize"><c>p_filesz</c>: bytes taken from the file.</param>
/// <param name="MemorySize"><c>p_memsz</c>: bytes in memory; the excess over FileSize is zero (.bss).</param>
/// <param name="Align"><c>p_align</c>.</param>
public readonly record struct ElfProgramHeader(
    uint Type, uint Flags, ulong Offset, ulong VirtualAddress, ulong FileSize, ulong MemorySize, ulong Align)
{
    /// <summary>True for a <c>PT_LOAD</c> segment.</summary>
    public bool IsLoad => Type == ElfImage.PT_LOAD;

    /// <summary>True when the segment is writable (<c>PF_W</c>).</summary>
    public bool IsWritable => (Flags & ElfImage.PF_W) != 0;
}

/// <summary>
/// An ELF64 little-endian x86-64 executable as the ELF image activator sees it
/// (<c>exec_elf64_imgact</c> in <c>imgact_elf.c</c>): the header and the program headers,
/// parsed from the image header, i.e. the first page of the file as read through its kernel
/// mapping. Everything else is refused with <c>ENOEXEC</c>.
/// <para>
/// Checks, each a FreeBSD check or a consequence of how this prototype loads: magic, class
/// <c>ELFCLASS64</c>, data <c>ELFDATA2LSB</c>, version <c>EV_CURRENT</c> (both fields), type
/// <c>ET_EXEC</c> or <c>ET_DYN</c>, machine <c>EM_X86_64</c>, <c>e_phentsize</c> == 56, program
/// headers 8-byte aligned, inside the first page ("Only support headers in first page for now")
/// and inside the file; at least one <c>PT_LOAD</c>; for each <c>PT_LOAD</c>: <c>p_filesz</c> ≤
/// <c>p_memsz</c> and the file bytes inside the file (<c>load_section</c>'s "truncated ELF file"),
/// <c>p_offset</c> ≡ <c>p_vaddr</c> mod <c>PAGE_SIZE</c> (FreeBSD maps file page
/// <c>trunc_page(p_offset)</c> at <c>trunc_page(p_vaddr)</c>), the relocated range inside user
/// space below the stack, and no two segments overlapping. Not checked, because nothing here
/// depends on it: <c>e_ident[EI_OSABI]</c> (branding), <c>p_align</c>, section headers.
/// <c>PT_INTERP</c> is parsed like any header but not acted on: the prototype has no run-time
/// linker, and <see cref="Exec"/> reports the image's own entry point.
/// </para>
/// </summary>
public sealed class ElfImage
{
    /// <summary>Size of <c>Elf64_Ehdr</c>.</summary>
    public const int EhdrSize = 64;

    /// <summary>Size of <c>Elf64_Phdr</c>: the only <c>e_phentsize</c> accepted.</summary>
    public const int PhdrSize = 56;

    /// <summary><c>e_ident[EI_CLASS]</c> of a 64-bit image.</summary>
    public const byte ELFCLASS64 = 2;

    /// <summary><c>e_ident[EI_DATA]</c> of a little-endian image.</summary>
    public const byte ELFDATA2LSB = 1;

    /// <summary><c>EV_CURRENT</c>, in <c>e_ident[EI_VERSION]</c> and <c>e_version</c>.</summary>
    public const byte EV_CURRENT = 1;

    /// <summary><c>e_type</c> of a relocatable object (refused).</summary>
    public const ushort ET_REL = 1;

    /// <summary><c>e_type</c> of an executable loaded at its link addresses.</summary>
    public const ushort ET_EXEC = 2;

    /// <summary><c>e_type</c> of a shared object or position-independent executable (PIE).</summary>
    public const ushort ET_DYN = 3;

    /// <summary><c>e_machine</c> of x86-64.</summary>
    public const ushort EM_X86_64 = 62;

    /// <summary><c>p_type</c>: unused entry.</summary>
    public const uint PT_NULL = 0;

    /// <summary><c>p_type</c>: loadable segment.</summary>
    public const uint PT_LOAD = 1;

    /// <summary><c>p_type</c>: path of the program interpreter.</summary>
    public const uint PT_INTERP = 3;

    /// <summary><c>p_flags</c>: executable.</summary>
    public const uint PF_X = 1;

    /// <summary><c>p_flags</c>: writable.</summary>
    public const uint PF_W = 2;

    /// <summary><c>p_flags</c>: readable.</summary>
    public const uint PF_R = 4;

    private ElfImage(ushort type, ushort machine, ulong entry, ulong phoff, int phnum, ElfProgramHeader[] headers)
    {
        Type = type;
        MachineCode = machine;
        Entry = entry;
        ProgramHeaderOffset = phoff;
        ProgramHeaderCount = phnum;
        ProgramHeaders = headers;
        LoadSegments = Array.FindAll(headers, h => h.IsLoad);
        LoadBias = type == ET_DYN ? Exec.PieBase : 0;
    }

    /// <summary><c>e_type</c>: <see cref="ET_EXEC"/> or <see cref="ET_DYN"/>.</summary>
    public ushort Type { get; }

    /// <summary><c>e_machine</c> (always <see cref="EM_X86_64"/>).</summary>
    public ushort MachineCode { get; }

    /// <summary><c>e_entry</c>, as in the file (not relocated).</summary>
    public ulong Entry { get; }

    /// <summary><c>e_phoff</c>.</summary>
    public ulong ProgramHeaderOffset { get; }

    /// <summary><c>e_phnum</c>.</summary>
    public int ProgramHeaderCount { get; }

    /// <summary>All program headers, in file order.</summary>
    public IReadOnlyList<ElfProgramHeader> ProgramHeaders { get; }

    /// <summary>The <c>PT_LOAD</c> headers, in file order (including any with <c>p_memsz</c> 0).</summary>
    public IReadOnlyList<ElfProgramHeader> LoadSegments { get; }

    /// <summary>True for <see cref="ET_DYN"/> (a PIE), which is relocated by <see cref="LoadBias"/>.</summary>
    public bool IsPositionIndependent => Type == ET_DYN;

    /// <summary>What is added to every <c>p_vaddr</c> and to <c>e_entry</c>: <see cref="Exec.PieBase"/> for a PIE, else 0.</summary>
    public ulong LoadBias { get; }

    /// <summary>
    /// Parses and validates an image. <paramref name="imageHeader"/> is the file's first page as
    /// read through its mapping (at most <c>PAGE_SIZE</c> bytes; bytes at or past
    /// <paramref name="fileSize"/> are ignored). Returns 0 with the image, or <c>ENOEXEC</c> with
    /// <paramref name="reason"/> saying which check failed.
    /// </summary>
    public static int Parse(ReadOnlySpan<byte> imageHeader, long fileSize, out ElfImage? image, out string? reason)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(fileSize);
        image = null;
        if (imageHeader.Length < Math.Min(Pte.PageSize, fileSize))
        {
            throw new ArgumentException("the image header must hold the file's whole first page (or the whole file when it is shorter)", nameof(imageHeader));
        }

        var hdr = imageHeader[..(int)Math.Min(Math.Min(imageHeader.Length, Pte.PageSize), fileSize)];
        if (hdr.Length < EhdrSize)
        {
            return Fail(out reason, $"truncated: {hdr.Length} bytes, smaller than the ELF header ({EhdrSize})");
        }

        if (hdr[0] != 0x7f || hdr[1] != (byte)'E' || hdr[2] != (byte)'L' || hdr[3] != (byte)'F')
        {
            return Fail(out reason, "bad magic: not an ELF file");
        }

        if (hdr[4] != ELFCLASS64)
        {
            return Fail(out reason, $"class {hdr[4]}: only ELFCLASS64 is supported");
        }

        if (hdr[5] != ELFDATA2LSB)
        {
            return Fail(out reason, $"data encoding {hdr[5]}: only ELFDATA2LSB (little-endian) is supported");
        }

        ushort type = BinaryPrimitives.ReadUInt16LittleEndian(hdr[16..]);
        ushort machine = BinaryPrimitives.ReadUInt16LittleEndian(hdr[18..]);
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(hdr[20..]);
        ulong entry = BinaryPrimitives.ReadUInt64LittleEndian(hdr[24..]);
        ulong phoff = BinaryPrimitives.ReadUInt64LittleEndian(hdr[32..]);
        ushort phentsize = BinaryPrimitives.ReadUInt16LittleEndian(hdr[54..]);
        ushort phnum = BinaryPrimitives.ReadUInt16LittleEndian(hdr[56..]);
        if (hdr[6] != EV_CURRENT || version != EV_CURRENT)
        {
            return Fail(out reason, $"version {hdr[6]}/{version}: only EV_CURRENT is supported");
        }

        if (type != ET_EXEC && type != ET_DYN)
        {
            return Fail(out reason, $"type {type}: only ET_EXEC and ET_DYN are executable");
        }

        if (machine != EM_X86_64)
        {
            return Fail(out reason, $"machine {machine}: only EM_X86_64 ({EM_X86_64}) is supported");
        }

        if (phentsize != PhdrSize)
        {
            return Fail(out reason, $"e_phentsize {phentsize}: must be {PhdrSize}");
        }

        if (phoff % sizeof(ulong) != 0)
        {
            return Fail(out reason, $"unaligned program headers at offset {phoff}");
        }

        // imgact_elf.c: "Only support headers in first page for now".
        ulong phbytes = (ulong)phnum * PhdrSize;
        if (phoff > (ulong)Pte.PageSize || phbytes > (ulong)Pte.PageSize - phoff)
        {
            return Fail(out reason, $"program headers not in the first page (offset {phoff}, {phnum} of {PhdrSize} bytes)");
        }

        if (phoff + phbytes > (ulong)fileSize)
        {
            return Fail(out reason, $"truncated: program headers end at {phoff + phbytes}, past EOF ({fileSize})");
        }

        var headers = new ElfProgramHeader[phnum];
        for (int i = 0; i < phnum; i++)
        {
            var p = hdr.Slice((int)phoff + (i * PhdrSize), PhdrSize);
            headers[i] = new ElfProgramHeader(
                BinaryPrimitives.ReadUInt32LittleEndian(p),
                BinaryPrimitives.ReadUInt32LittleEndian(p[4..]),
                BinaryPrimitives.ReadUInt64LittleEndian(p[8..]),
                BinaryPrimitives.ReadUInt64LittleEndian(p[16..]),
                BinaryPrimitives.ReadUInt64LittleEndian(p[32..]),
                BinaryPrimitives.ReadUInt64LittleEndian(p[40..]),
                BinaryPrimitives.ReadUInt64LittleEndian(p[48..]));
        }

        var candidate = new ElfImage(type, machine, entry, phoff, phnum, headers);
        int error = CheckLoadSegments(candidate, fileSize, out reason);
        if (error == Errno.OK)
        {
            image = candidate;
        }

        return error;
    }

    /// <summary>The relocated range [start, end) a load segment occupies in memory.</summary>
    internal (ulong Start, ulong End) MemoryRange(in ElfProgramHeader segment)
    {
        ulong start = LoadBias + segment.VirtualAddress;
        return (start, start + segment.MemorySize);
    }

    private static int CheckLoadSegments(ElfImage image, long fileSize, out string? reason)
    {
        if (image.LoadSegments.Count == 0)
        {
            return Fail(out reason, "no PT_LOAD segment");
        }

        var ranges = new List<(ulong Start, ulong End)>();
        for (int i = 0; i < image.LoadSegments.Count; i++)
        {
            var s = image.LoadSegments[i];
            if (s.FileSize > s.MemorySize)
            {
                return Fail(out reason, $"PT_LOAD {i}: p_filesz 0x{s.FileSize:x} > p_memsz 0x{s.MemorySize:x}");
            }

            // load_section: "truncated ELF file"; unsigned sums are checked for wrap-around.
            if (s.FileSize != 0 && (s.Offset > (ulong)fileSize || s.FileSize > (ulong)fileSize - s.Offset))
            {
                return Fail(out reason, $"PT_LOAD {i}: file bytes [0x{s.Offset:x}, +0x{s.FileSize:x}) run past EOF ({fileSize})");
            }

            if ((s.Offset & Pte.PageMask) != (s.VirtualAddress & Pte.PageMask))
            {
                return Fail(out reason, $"PT_LOAD {i}: p_offset 0x{s.Offset:x} and p_vaddr 0x{s.VirtualAddress:x} differ within a page");
            }

            if (s.MemorySize == 0)
            {
                continue; // occupies nothing
            }

            ulong start = image.LoadBias + s.VirtualAddress;
            if (start < s.VirtualAddress || start < VmLayout.UserMin || start >= Exec.StackBottom
                || s.MemorySize > Exec.StackBottom - start)
            {
                return Fail(out reason, $"PT_LOAD {i}: [0x{start:x}, +0x{s.MemorySize:x}) is outside user space [0x{VmLayout.UserMin:x}, 0x{Exec.StackBottom:x})");
            }

            ranges.Add((start, start + s.MemorySize));
        }

        ranges.Sort();
        for (int i = 1; i < ranges.Count; i++)
        {
            if (ranges[i].Start < ranges[i - 1].End)
            {
                return Fail(out reason, $"PT_LOAD segments overlap at 0x{ranges[i].Start:x}");
            }
        }

        reason = null;
        return Errno.OK;
    }

    private static int Fail(out string? reason, string why)
    {
        reason = why;
        return Errno.ENOEXEC;
    }
}
