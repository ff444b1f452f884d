/**
 * PBA: the part of the ONNX model format (onnx/onnx.proto, IR version 8) that the LSTM export writes,
 * encoded by protobufjs. The message and field numbers are ONNX's; messages and fields the export never
 * sets are left out, which protobuf allows (a reader sees them as absent). Kept as text here rather than
 * a .proto file beside it, so a compiled binary needs no extra file to export a model.
 */
import protobuf from "protobufjs";

const ONNX_SUBSET_PROTO = `
syntax = "proto2";
package onnx;

message AttributeProto {
  enum AttributeType { UNDEFINED = 0; FLOAT = 1; INT = 2; STRING = 3; FLOATS = 6; INTS = 7; }
  optional string name = 1;
  optional AttributeType type = 20;
  optional float f = 2;
  optional int64 i = 3;
  optional bytes s = 4;
  repeated float floats = 7;
  repeated int64 ints = 8;
}

message ValueInfoProto {
  optional string name = 1;
  optional TypeProto type = 2;
  optional string doc_string = 3;
}

message NodeProto {
  repeated string input = 1;
  repeated string output = 2;
  optional string name = 3;
  optional string op_type = 4;
  optional string domain = 7;
  repeated AttributeProto attribute = 5;
}

message ModelProto {
  optional int64 ir_version = 1;
  repeated OperatorSetIdProto opset_import = 8;
  optional string producer_name = 2;
  optional string producer_version = 3;
  optional string doc_string = 6;
  optional GraphProto graph = 7;
  repeated StringStringEntryProto metadata_props = 14;
}

message StringStringEntryProto {
  optional string key = 1;
  optional string value = 2;
}

message GraphProto {
  repeated NodeProto node = 1;
  optional string name = 2;
  repeated TensorProto initializer = 5;
  optional string doc_string = 10;
  repeated ValueInfoProto input = 11;
  repeated ValueInfoProto output = 12;
}

message TensorProto {
  enum DataType { UNDEFINED = 0; FLOAT = 1; INT64 = 7; }
  repeated int64 dims = 1;
  optional int32 data_type = 2;
  optional string name = 8;
  optional bytes raw_data = 9;
}

message TensorShapeProto {
  message Dimension {
    oneof value {
      int64 dim_value = 1;
      string dim_param = 2;
    }
  }
  repeated Dimension dim = 1;
}

message TypeProto {
  message Tensor {
    optional int32 elem_type = 1;
    optional TensorShapeProto shape = 2;
  }
  oneof value {
    Tensor tensor_type = 1;
  }
}

message OperatorSetIdProto {
  optional string domain = 1;
  optional int64 version = 2;
}
`;

/** TensorProto.DataType values used here. */
export const ONNX_FLOAT = 1;
export const ONNX_INT64 = 7;

export interface OnnxAttribute {
  name: string;
  /** AttributeType: 1 FLOAT, 2 INT, 3 STRING, 6 FLOATS, 7 INTS. */
  type: 1 | 2 | 3 | 6 | 7;
  f?: number;
  i?: number;
  s?: Uint8Array;
  floats?: number[];
  ints?: number[];
}

export interface OnnxNode {
  name: string;
  op_type: string;
  input: string[];
  output: string[];
  attribute?: OnnxAttribute[];
}

export interface OnnxTensor {
  name: string;
  dims: number[];
  data_type: number;
  /** Fixed-width little-endian elements, as ONNX requires of raw_data. */
  raw_data: Uint8Array;
}

/** A dimension is fixed (a number) or named and free (a string, e.g. "batch"). */
export type OnnxDim = number | string;

export interface OnnxValueInfo {
  name: string;
  elemType: number;
  shape: OnnxDim[];
  doc?: string;
}

export interface OnnxModel {
  irVersion: number;
  opsetVersion: number;
  producerName: string;
  producerVersion: string;
  doc: string;
  graphName: string;
  nodes: OnnxNode[];
  initializers: OnnxTensor[];
  inputs: OnnxValueInfo[];
  outputs: OnnxValueInfo[];
  metadata: Record<string, string>;
}

let modelType: protobuf.Type | undefined;

function modelProto(): protobuf.Type {
  modelType ??= protobuf.parse(ONNX_SUBSET_PROTO, { keepCase: true }).root.lookupType("onnx.ModelProto");
  return modelType;
}

function valueInfo(v: OnnxValueInfo) {
  return {
    name: v.name,
    doc_string: v.doc,
    type: {
      tensor_type: {
        elem_type: v.elemType,
        shape: { dim: v.shape.map((d) => typeof d === "number" ? { dim_value: d } : { dim_param: d }) },
      },
    },
  };
}

/** Serialises a model to the bytes of a .onnx file. */
export function encodeOnnxModel(m: OnnxModel): Uint8Array {
  const type = modelProto();
  const plain = {
    ir_version: m.irVersion,
    opset_import: [{ domain: "", version: m.opsetVersion }],
    producer_name: m.producerName,
    producer_version: m.producerVersion,
    doc_string: m.doc,
    graph: {
      name: m.graphName,
      node: m.nodes,
      initializer: m.initializers,
      input: m.inputs.map(valueInfo),
      output: m.outputs.map(valueInfo),
    },
    metadata_props: Object.entries(m.metadata).map(([key, value]) => ({ key, value })),
  };
  const problem = type.verify(plain);
  if (problem) throw new Error(`ONNX model does not fit the schema: ${problem}`);
  return type.encode(type.fromObject(plain)).finish();
}

/** Decodes a .onnx file into plain objects (snake_case fields, int64 as numbers): for tests and reports. */
export function decodeOnnxModel(bytes: Uint8Array): Record<string, unknown> {
  const type = modelProto();
  return type.toObject(type.decode(bytes), { longs: Number, bytes: Uint8Array, defaults: false }) as Record<
    string,
    unknown
  >;
}

/** float32 elements as little-endian raw_data, whatever the host's byte order. */
export function float32Raw(values: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(values.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) view.setFloat32(i * 4, values[i], true);
  return out;
}

/** int64 elements as little-endian raw_data. */
export function int64Raw(values: readonly number[]): Uint8Array {
  const out = new Uint8Array(values.length * 8);
  const view = new DataView(out.buffer);
  values.forEach((v, i) => view.setBigInt64(i * 8, BigInt(v), true));
  return out;
}
