package proxy

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
)

// The kernel relay's program is an sk_skb verdict, run by the kernel on
// every chunk of data that arrives on a socket in its SOCKMAP, before
// anyone reads it. It finds the chunk's flow by the socket's cookie
// (routes: cookie → flow index), follows the flow's messages through the
// chunk, and redirects the chunk to the egress of the other socket of the
// session (flow index xor 1). A socket with no route gets its data as
// any socket does, for user space to read: taking a session's routes out
// is how portcullis takes its bytes back.
//
// Following the messages is what lets portcullis end a session between
// two of them, as it does on its own relays: the flow's state says how
// much of the current message is still to come. Messages have
// PostgreSQL's shape, a type byte and a 4-byte big-endian length that
// counts itself; a chunk is walked with bpf_loop, one step per header or
// run of body bytes, on a copy of the state that is kept only if the
// chunk is redirected.

// A flow's state in the flows array, as the program keeps it.
const (
	flowBytes = 0  // u64: bytes redirected
	flowLeft  = 8  // u32: body bytes of the current message still to come
	flowHave  = 12 // u32: header bytes of the next message seen so far
	flowHdr   = 16 // u64: those header bytes, the first the most significant
	flowType  = 24 // u32: the current message's type byte
	flowFlags = 28 // u32: flowLost, flowGoodbye
	flowSize  = 32

	// flowLost: the stream broke the framing (a length under 4), or a
	// chunk could not be walked; its bytes still flow, but a session
	// can no longer be ended between two messages.
	flowLost = 1
	// flowGoodbye: a Terminate passed (what Framer.SaidGoodbye tells).
	flowGoodbye = 2
)

// The walk's state on the verdict's stack, from walkBase, handed to each
// step.
const (
	walkBase  = -64
	walkSkb   = 0
	walkOff   = 8
	walkLen   = 12
	walkLeft  = 16
	walkHave  = 20
	walkHdr   = 24
	walkType  = 32
	walkFlags = 36

	// walkSteps bounds the steps per chunk: two per message at most,
	// and a message is at least five bytes, so chunks up to 2.5 MiB.
	walkSteps = 1 << 20
)

// relayFunc describes a function of the program, as the verifier wants
// for a program with callbacks.
func relayFunc(name string, params ...string) *btf.Func {
	u64 := &btf.Int{Name: "u64", Size: 8}
	var ps []btf.FuncParam
	for _, p := range params {
		ps = append(ps, btf.FuncParam{Name: p, Type: u64})
	}
	return &btf.Func{
		Name:    name,
		Linkage: btf.StaticFunc,
		Type:    &btf.FuncProto{Return: &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed}, Params: ps},
	}
}

// relayProgram is the verdict program over the three maps.
func relayProgram(routes, flows, socks *ebpf.Map) asm.Instructions {
	const (
		r0, r1, r2, r3, r4, r5 = asm.R0, asm.R1, asm.R2, asm.R3, asm.R4, asm.R5
		r6, r7, r8, r9, fp     = asm.R6, asm.R7, asm.R8, asm.R9, asm.R10
		b, w, dw               = asm.Byte, asm.Word, asm.DWord
		skPass                 = 1
	)
	walk := func(off int16) int16 { return walkBase + off }
	// Copy a field between the flow (r8) and the walk's state.
	load := func(dst, src int16, size asm.Size) asm.Instructions {
		return asm.Instructions{asm.LoadMem(r1, r8, src, size), asm.StoreMem(fp, walk(dst), r1, size)}
	}
	store := func(dst, src int16, size asm.Size) asm.Instructions {
		return asm.Instructions{asm.LoadMem(r1, fp, walk(src), size), asm.StoreMem(r8, dst, r1, size)}
	}

	// loadAt copies n bytes of the chunk from the walk's offset (r3) to
	// fp-8, in step; a chunk that cannot be read loses the flow.
	loadAt := func(n int32) asm.Instructions {
		return asm.Instructions{
			asm.LoadMem(r1, r9, walkSkb, dw),
			asm.Mov.Reg(r2, r3),
			asm.Mov.Reg(r3, fp),
			asm.Add.Imm(r3, -8),
			asm.Mov.Imm(r4, n),
			asm.FnSkbLoadBytes.Call(),
			asm.JNE.Imm(r0, 0, "broken"),
		}
	}

	// lookup finds the value of m at the key at fp+key (r0), or passes
	// the chunk when there is none.
	lookup := func(m *ebpf.Map, key int16) asm.Instructions {
		return asm.Instructions{
			asm.LoadMapPtr(r1, m.FD()),
			asm.Mov.Reg(r2, fp),
			asm.Add.Imm(r2, int32(key)),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(r0, 0, "pass"),
		}
	}

	var p asm.Instructions
	// r6 = skb; the route by the socket's cookie (at fp-8); r7 = flow
	// index (at fp-12); r8 = the flow.
	p = append(p,
		btf.WithFuncMetadata(asm.Mov.Reg(r6, r1), relayFunc("relay", "skb")),
		asm.FnGetSocketCookie.Call(),
		asm.StoreMem(fp, -8, r0, dw),
	)
	p = append(p, lookup(routes, -8)...)
	p = append(p,
		asm.LoadMem(r7, r0, 0, w),
		asm.StoreMem(fp, -12, r7, w),
	)
	p = append(p, lookup(flows, -12)...)
	p = append(p,
		asm.Mov.Reg(r8, r0),
		// The walk's state: the chunk, from offset 0, and the flow's.
		asm.StoreMem(fp, walk(walkSkb), r6, dw),
		asm.StoreImm(fp, walk(walkOff), 0, w),
		asm.LoadMem(r1, r6, 0, w), // skb->len
		asm.StoreMem(fp, walk(walkLen), r1, w),
	)
	p = append(p, load(walkLeft, flowLeft, w)...)
	p = append(p, load(walkHave, flowHave, w)...)
	p = append(p, load(walkHdr, flowHdr, dw)...)
	p = append(p, load(walkType, flowType, w)...)
	p = append(p, load(walkFlags, flowFlags, w)...)
	// A lost flow is no longer walked.
	p = append(p,
		asm.LoadMem(r1, fp, walk(walkFlags), w),
		asm.JSet.Imm(r1, flowLost, "count"),
		asm.Mov.Imm(r1, walkSteps),
		asm.Instruction{OpCode: asm.LoadImmOp(dw), Dst: r2, Src: asm.PseudoFunc, Constant: -1}.WithReference("step"),
		asm.Mov.Reg(r3, fp),
		asm.Add.Imm(r3, walkBase),
		asm.Mov.Imm(r4, 0),
		asm.FnLoop.Call(),
		// A chunk not walked to its end loses the flow.
		asm.LoadMem(r1, fp, walk(walkOff), w),
		asm.LoadMem(r2, fp, walk(walkLen), w),
		asm.JGE.Reg(r1, r2, "keep"),
		asm.LoadMem(r1, fp, walk(walkFlags), w),
		asm.Or.Imm(r1, flowLost),
		asm.StoreMem(fp, walk(walkFlags), r1, w),
	)
	keep := asm.Instructions{}
	keep = append(keep, store(flowLeft, walkLeft, w)...)
	keep[0] = keep[0].WithSymbol("keep")
	keep = append(keep, store(flowHave, walkHave, w)...)
	keep = append(keep, store(flowHdr, walkHdr, dw)...)
	keep = append(keep, store(flowType, walkType, w)...)
	keep = append(keep, store(flowFlags, walkFlags, w)...)
	p = append(p, keep...)
	p = append(p,
		// Count the chunk and send it to the session's other socket.
		asm.LoadMem(r1, r6, 0, w).WithSymbol("count"),
		asm.LoadMem(r2, r8, flowBytes, dw),
		asm.Add.Reg(r2, r1),
		asm.StoreMem(r8, flowBytes, r2, dw),
		asm.Mov.Reg(r1, r6),
		asm.LoadMapPtr(r2, socks.FD()),
		asm.Mov.Reg(r3, r7),
		asm.Xor.Imm(r3, 1),
		asm.Mov.Imm(r4, 0),
		asm.FnSkRedirectMap.Call(),
		asm.Return(),
		asm.Mov.Imm(r0, skPass).WithSymbol("pass"),
		asm.Return(),
	)

	// step(index, state) takes one step through the chunk: a whole
	// header, one byte of a header split across chunks, or a run of body
	// bytes. It returns 1 to stop: at the chunk's end, or on a broken
	// stream (walkFlags gets flowLost).
	p = append(p,
		btf.WithFuncMetadata(asm.Mov.Reg(r9, r2), relayFunc("step", "index", "state")).WithSymbol("step"),
		asm.LoadMem(r3, r9, walkOff, w),
		asm.LoadMem(r4, r9, walkLen, w),
		asm.JGE.Reg(r3, r4, "done"),
		asm.LoadMem(r5, r9, walkHave, w),
		asm.JNE.Imm(r5, 0, "split"),
		asm.LoadMem(r0, r9, walkLeft, w),
		asm.JNE.Imm(r0, 0, "body"),
		asm.Mov.Reg(r1, r4),
		asm.Sub.Reg(r1, r3),
		asm.JLT.Imm(r1, 5, "split"),
	)
	// A whole header in this chunk: r1 = length, r2 = type.
	p = append(p, loadAt(5)...)
	p = append(p,
		asm.LoadMem(r1, fp, -7, b),
		asm.LSh.Imm(r1, 24),
		asm.LoadMem(r2, fp, -6, b),
		asm.LSh.Imm(r2, 16),
		asm.Or.Reg(r1, r2),
		asm.LoadMem(r2, fp, -5, b),
		asm.LSh.Imm(r2, 8),
		asm.Or.Reg(r1, r2),
		asm.LoadMem(r2, fp, -4, b),
		asm.Or.Reg(r1, r2),
		asm.LoadMem(r2, fp, -8, b),
		asm.LoadMem(r3, r9, walkOff, w),
		asm.Add.Imm(r3, 5),
		asm.StoreMem(r9, walkOff, r3, w),
		asm.Ja.Label("header"),
	)
	// One byte of a header split across chunks.
	one := loadAt(1)
	one[0] = one[0].WithSymbol("split")
	p = append(p, one...)
	p = append(p,
		asm.LoadMem(r1, fp, -8, b),
		asm.LoadMem(r2, r9, walkHdr, dw),
		asm.LSh.Imm(r2, 8),
		asm.Or.Reg(r2, r1),
		asm.StoreMem(r9, walkHdr, r2, dw),
		asm.LoadMem(r3, r9, walkOff, w),
		asm.Add.Imm(r3, 1),
		asm.StoreMem(r9, walkOff, r3, w),
		asm.LoadMem(r5, r9, walkHave, w),
		asm.Add.Imm(r5, 1),
		asm.StoreMem(r9, walkHave, r5, w),
		asm.JLT.Imm(r5, 5, "next"),
		asm.StoreImm(r9, walkHave, 0, w),
		asm.Mov.Imm(r0, 0),
		asm.StoreMem(r9, walkHdr, r0, dw),
		asm.Mov.Reg(r1, r2),
		asm.LSh.Imm(r1, 32),
		asm.RSh.Imm(r1, 32),
		asm.RSh.Imm(r2, 32),
		asm.And.Imm(r2, 0xff),

		// A header is complete: r1 = length, r2 = type.
		asm.JLT.Imm(r1, 4, "broken").WithSymbol("header"),
		asm.Add.Imm(r1, -4),
		asm.StoreMem(r9, walkLeft, r1, w),
		asm.StoreMem(r9, walkType, r2, w),
		asm.JNE.Imm(r2, 'X', "next"),
		asm.JNE.Imm(r1, 0, "next"),
		asm.LoadMem(r1, r9, walkFlags, w),
		asm.Or.Imm(r1, flowGoodbye),
		asm.StoreMem(r9, walkFlags, r1, w),
		asm.Ja.Label("next"),

		// Body bytes: as many of the message's as the chunk holds.
		asm.Mov.Reg(r1, r4).WithSymbol("body"),
		asm.Sub.Reg(r1, r3),
		asm.JLE.Reg(r1, r0, "take"),
		asm.Mov.Reg(r1, r0),
		asm.Add.Reg(r3, r1).WithSymbol("take"),
		asm.Sub.Reg(r0, r1),
		asm.StoreMem(r9, walkOff, r3, w),
		asm.StoreMem(r9, walkLeft, r0, w),
		asm.Mov.Imm(r0, 0).WithSymbol("next"),
		asm.Return(),

		asm.LoadMem(r1, r9, walkFlags, w).WithSymbol("broken"),
		asm.Or.Imm(r1, flowLost),
		asm.StoreMem(r9, walkFlags, r1, w),
		asm.Mov.Imm(r0, 1).WithSymbol("done"),
		asm.Return(),
	)
	return p
}
